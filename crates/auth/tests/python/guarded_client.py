"""A grpcio client against a file service guarded by sessions (--auth-url): it logs in
with the auth service, is refused without the session, served with it as
`authorization: Bearer <id>` metadata, and refused again after logging out.

Usage: guarded_client.py AUTH_HOST:PORT FILE_HOST:PORT CACHE_SECONDS.
Exits non-zero on the first broken expectation.
"""

import sys
import time

import grpc

import auth_service_pb2 as auth_pb
import auth_service_pb2_grpc as auth_grpc
import file_service_pb2 as file_pb
import file_service_pb2_grpc as file_grpc


def main() -> None:
    auth_target, file_target, cache_seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    with grpc.insecure_channel(auth_target) as auth_channel, grpc.insecure_channel(
        file_target
    ) as file_channel:
        auth = auth_grpc.AuthServiceStub(auth_channel)
        files = file_grpc.FileServiceStub(file_channel)

        login = auth.Login(auth_pb.LoginRequest(username="user1", password="pass123"))
        assert login.success, login
        valid = auth.ValidateSession(auth_pb.ValidateSessionRequest(session_id=login.session_id))
        assert valid.valid and valid.username == "user1", valid

        try:
            files.SayHello(file_pb.HelloRequest(name="Ada"), timeout=10)
            raise AssertionError("served without a session")
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error

        metadata = [("authorization", f"Bearer {login.session_id}")]
        reply = files.SayHello(file_pb.HelloRequest(name="Ada"), metadata=metadata, timeout=10)
        assert reply.message == "Hello, Ada!", reply

        logout = auth.Logout(auth_pb.LogoutRequest(session_id=login.session_id))
        assert logout.success, logout
        time.sleep(cache_seconds)
        try:
            files.SayHello(file_pb.HelloRequest(name="Ada"), metadata=metadata, timeout=10)
            raise AssertionError("served after logout")
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error
    print("python guarded client: all checks passed")


if __name__ == "__main__":
    main()

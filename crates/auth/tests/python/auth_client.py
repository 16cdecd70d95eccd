"""A grpcio client, as the old Python system's, logging in and out of the auth service.

Usage: auth_client.py HOST:PORT. Exits non-zero on the first broken expectation.
"""

import sys
import uuid

import grpc

import auth_service_pb2 as pb
import auth_service_pb2_grpc as pb_grpc


def main() -> None:
    with grpc.insecure_channel(sys.argv[1]) as channel:
        grpc.channel_ready_future(channel).result(timeout=20)
        stub = pb_grpc.AuthServiceStub(channel)

        login = stub.Login(pb.LoginRequest(username="user1", password="pass123"))
        assert login.success, login
        assert login.message == "Login successful", login.message
        uuid.UUID(login.session_id)

        logout = stub.Logout(pb.LogoutRequest(session_id=login.session_id))
        assert logout.success, logout
        assert logout.message == "Logout successful", logout.message

        again = stub.Logout(pb.LogoutRequest(session_id=login.session_id))
        assert not again.success and again.message == "Unknown session", again
    print("python auth client: all checks passed")


if __name__ == "__main__":
    main()

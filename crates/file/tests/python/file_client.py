"""A grpcio client, as the old Python system's, calling every FileService method.

Usage: file_client.py HOST:PORT UPLOAD_DIR. Exits non-zero on the first broken expectation.
"""

import datetime
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

import file_service_pb2 as pb
import file_service_pb2_grpc as pb_grpc


def main() -> None:
    target, upload_dir = sys.argv[1], sys.argv[2]
    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=20)
        stub = pb_grpc.FileServiceStub(channel)

        assert stub.SayHello(pb.HelloRequest(name="Py")).message == "Hello, Py!"
        assert stub.SayGoodbye(pb.GoodbyeRequest(name="Py")).message == "Goodbye, Py!"

        stamp = stub.GetServerTime(pb.Empty()).timestamp
        datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S")

        reply = stub.WriteFile(pb.FileRequest(filename="../py.txt", content=b"from python"))
        assert reply.success, reply
        assert reply.message == "File py.txt written successfully", reply.message
        assert reply.file_path == os.path.join(upload_dir, "py.txt"), reply.file_path
        with open(os.path.join(upload_dir, "py.txt"), "rb") as stored:
            assert stored.read() == b"from python"

        assert list(stub.GetFilesList(pb.Empty()).filenames) == ["py.txt"]

        try:
            stub.WriteFile(pb.FileRequest(filename="..", content=b"x"))
            raise AssertionError("'..' must be refused")
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error

        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(health_pb2.HealthCheckRequest(service="file.FileService")).status
        assert status == health_pb2.HealthCheckResponse.SERVING, status
    print("python file client: all checks passed")


if __name__ == "__main__":
    main()

"""A grpcio client that compresses every request with gzip, as grpcio clients may.

Usage: file_gzip.py HOST:PORT UPLOAD_DIR. Exits non-zero on the first broken expectation.
"""

import os
import sys

import grpc

import file_service_pb2 as pb
import file_service_pb2_grpc as pb_grpc


def main() -> None:
    target, upload_dir = sys.argv[1], sys.argv[2]
    # Channel-wide gzip: requests are compressed and gzip is offered for answers.
    with grpc.insecure_channel(target, compression=grpc.Compression.Gzip) as channel:
        grpc.channel_ready_future(channel).result(timeout=20)
        stub = pb_grpc.FileServiceStub(channel)
        content = b"compressible line of text\n" * 10000
        reply = stub.WriteFile(
            pb.FileRequest(filename="gzip.txt", content=content),
            compression=grpc.Compression.Gzip,
            timeout=20,
        )
        assert reply.success, reply
        with open(os.path.join(upload_dir, "gzip.txt"), "rb") as stored:
            assert stored.read() == content
        assert stub.SayHello(pb.HelloRequest(name="Gz"), timeout=20).message == "Hello, Gz!"
        assert "gzip.txt" in list(stub.GetFilesList(pb.Empty(), timeout=20).filenames)
    print("ok")


if __name__ == "__main__":
    main()

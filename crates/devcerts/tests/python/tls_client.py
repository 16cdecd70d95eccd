"""A grpcio client over TLS and mutual TLS, with the certificates of dev_certs.

Usage: tls_client.py TLS_TARGET MTLS_TARGET CERT_DIR. TLS_TARGET is a TLS server,
MTLS_TARGET one that requires client certificates; both as localhost:PORT, since grpcio
checks the server certificate's name. Exits non-zero on the first broken expectation.
"""

import os
import sys

import grpc

import file_service_pb2 as pb
import file_service_pb2_grpc as pb_grpc

# Every wait is bounded, so a hung handshake fails the test instead of stalling it.
TIMEOUT = 20


def read(cert_dir: str, name: str) -> bytes:
    with open(os.path.join(cert_dir, name), "rb") as pem:
        return pem.read()


def say_hello(target: str, credentials: grpc.ChannelCredentials) -> str:
    with grpc.secure_channel(target, credentials) as channel:
        stub = pb_grpc.FileServiceStub(channel)
        return stub.SayHello(pb.HelloRequest(name="Py"), timeout=TIMEOUT).message


def main() -> None:
    tls_target, mtls_target, cert_dir = sys.argv[1], sys.argv[2], sys.argv[3]
    ca = read(cert_dir, "ca.pem")
    trusting = grpc.ssl_channel_credentials(root_certificates=ca)
    identified = grpc.ssl_channel_credentials(
        root_certificates=ca,
        private_key=read(cert_dir, "client.key"),
        certificate_chain=read(cert_dir, "client.pem"),
    )

    assert say_hello(tls_target, trusting) == "Hello, Py!"
    assert say_hello(mtls_target, identified) == "Hello, Py!"

    try:
        say_hello(mtls_target, trusting)
        raise AssertionError("a mutual-TLS server must refuse a client without a certificate")
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error

    # The refusal did not harm the server.
    assert say_hello(mtls_target, identified) == "Hello, Py!"
    print("python TLS client: all checks passed")


if __name__ == "__main__":
    main()

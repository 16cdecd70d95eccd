"""A grpcio client, as the old Python system's, reading GetRandomNumbers streams.

Usage: random_client.py HOST:PORT. Exits non-zero on the first broken expectation.
"""

import datetime
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

import random_service_pb2 as pb
import random_service_pb2_grpc as pb_grpc


def main() -> None:
    target = sys.argv[1]
    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=20)
        stub = pb_grpc.RandomNumberServiceStub(channel)

        request = pb.RandomNumberRequest(min=1, max=6, count=200, delay=0)
        replies = list(stub.GetRandomNumbers(request, timeout=20))
        assert [reply.sequence for reply in replies] == list(range(1, 201)), replies[:3]
        numbers = {reply.number for reply in replies}
        assert numbers <= set(range(1, 7)), numbers
        assert {1, 6} <= numbers, numbers
        for reply in replies:
            datetime.datetime.strptime(reply.timestamp, "%H:%M:%S.%f")
            assert len(reply.timestamp) == len("14:25:30.123"), reply.timestamp

        extreme = pb.RandomNumberRequest(min=-(2**31), max=2**31 - 1, count=3, delay=1)
        assert len(list(stub.GetRandomNumbers(extreme, timeout=20))) == 3

        assert list(stub.GetRandomNumbers(pb.RandomNumberRequest(count=0), timeout=20)) == []

        try:
            list(stub.GetRandomNumbers(pb.RandomNumberRequest(min=5, max=1, count=1), timeout=20))
            raise AssertionError("min > max must be refused")
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
            assert error.details().startswith("min"), error.details()

        # A long slow stream: read one number, then cancel, as Ctrl+C in the old client did.
        slow = stub.GetRandomNumbers(
            pb.RandomNumberRequest(min=0, max=9, count=1000, delay=1000), timeout=20
        )
        first = next(slow)
        assert first.sequence == 1, first
        slow.cancel()

        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(
            health_pb2.HealthCheckRequest(service="random.RandomNumberService"), timeout=20
        ).status
        assert status == health_pb2.HealthCheckResponse.SERVING, status
    print("python random client: all checks passed")


if __name__ == "__main__":
    main()

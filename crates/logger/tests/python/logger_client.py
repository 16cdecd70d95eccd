"""A grpcio client, as the old Python system's, logging and querying through LoggerService.

Usage: logger_client.py HOST:PORT. Exits non-zero on the first broken expectation.
"""

import datetime
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

import logger_service_pb2 as pb
import logger_service_pb2_grpc as pb_grpc


def main() -> None:
    target = sys.argv[1]
    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=20)
        stub = pb_grpc.LoggerServiceStub(channel)

        # The old client's call: only the contract's two fields.
        assert stub.LogActivity(pb.LogRequest(event_type="PY_EVENT", details="from python"), timeout=20).logged
        # The additions: a timestamp and an event id, delivered twice, stored once.
        retried = pb.LogRequest(
            event_type="PY_RETRY",
            details="delivered twice",
            timestamp="2024-03-01 09:15:02.120",
            event_id="py-event-1",
        )
        assert stub.LogActivity(retried, timeout=20).logged
        assert stub.LogActivity(retried, timeout=20).logged

        logs = list(stub.QueryLogs(pb.LogQueryRequest(), timeout=20).logs)
        assert [(e.id, e.event_type, e.details) for e in logs] == [
            (2, "PY_RETRY", "delivered twice"),
            (1, "PY_EVENT", "from python"),
        ], logs
        assert logs[0].timestamp == "2024-03-01 09:15:02.120", logs[0]
        datetime.datetime.strptime(logs[1].timestamp, "%Y-%m-%d %H:%M:%S.%f")

        only = list(stub.QueryLogs(pb.LogQueryRequest(limit=5, event_type="PY_EVENT"), timeout=20).logs)
        assert [e.details for e in only] == ["from python"], only

        try:
            stub.LogActivity(pb.LogRequest(event_type="", details="x"), timeout=20)
            raise AssertionError("an empty event type must be refused")
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error

        follow = stub.FollowLogs(pb.LogFollowRequest(backlog=1), timeout=20)
        first = next(follow)
        assert first.details == "delivered twice", first
        follow.cancel()

        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(health_pb2.HealthCheckRequest(service="LoggerService"), timeout=20).status
        assert status == health_pb2.HealthCheckResponse.SERVING, status
    print("python logger client: all checks passed")


if __name__ == "__main__":
    main()

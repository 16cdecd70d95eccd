"""A grpcio client, as the old Python system's, using every StreamingService method.

Usage: streaming_client.py HOST:PORT UPLOAD_DIR. Exits non-zero on the first broken
expectation.
"""

import datetime
import hashlib
import os
import queue
import sys
import threading

import grpc

import streaming_service_pb2 as pb
import streaming_service_pb2_grpc as pb_grpc

CHUNK_SIZE = 1024 * 1024
TIMEOUT = 20


def check_time_stream(stub: pb_grpc.StreamingServiceStub) -> None:
    """Three updates in the contract's format, then cancel, as Ctrl+C did."""
    call = stub.StreamServerTime(pb.Empty(), timeout=TIMEOUT)
    stamps = []
    for update in call:
        stamps.append(datetime.datetime.strptime(update.timestamp, "%Y-%m-%d %H:%M:%S"))
        if len(stamps) == 3:
            break
    call.cancel()
    assert stamps == sorted(stamps), stamps
    assert (stamps[2] - stamps[0]).total_seconds() >= 1, stamps


def check_upload(stub: pb_grpc.StreamingServiceStub, upload_dir: str) -> None:
    """1 MiB chunks naming the file, then an empty chunk with is_last_chunk=True."""
    content = bytes(range(256)) * (10 * 1024)  # 2.5 MiB: two full chunks and a partial one

    def chunks():
        for start in range(0, len(content), CHUNK_SIZE):
            yield pb.FileChunk(
                filename="../py_upload.bin",
                chunk_data=content[start : start + CHUNK_SIZE],
                is_last_chunk=False,
            )
        yield pb.FileChunk(filename="../py_upload.bin", chunk_data=b"", is_last_chunk=True)

    reply = stub.StreamUploadFile(chunks(), timeout=TIMEOUT)
    assert reply.success, reply
    assert reply.message == "File py_upload.bin uploaded successfully", reply.message
    assert reply.file_path == os.path.join(upload_dir, "py_upload.bin"), reply.file_path
    assert reply.bytes_written == len(content), reply.bytes_written
    assert reply.sha256 == hashlib.sha256(content).hexdigest(), reply.sha256
    with open(os.path.join(upload_dir, "py_upload.bin"), "rb") as stored:
        assert stored.read() == content

    # A stream that ends without is_last_chunk stores nothing.
    def unfinished():
        yield pb.FileChunk(filename="py_unfinished.bin", chunk_data=b"abc")

    try:
        stub.StreamUploadFile(unfinished(), timeout=TIMEOUT)
        raise AssertionError("an upload without a last chunk must be refused")
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert sorted(os.listdir(upload_dir)) == ["py_upload.bin"], os.listdir(upload_dir)


class ChatClient:
    """One ChatStream call fed from a queue, its replies collected on a thread."""

    def __init__(self, stub: pb_grpc.StreamingServiceStub) -> None:
        self.outgoing: "queue.Queue" = queue.Queue()
        self.incoming: "queue.Queue" = queue.Queue()
        self.call = stub.ChatStream(iter(self.outgoing.get, None), timeout=TIMEOUT)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for message in self.call:
                self.incoming.put(message)
        except grpc.RpcError as error:
            self.incoming.put(error)
        self.incoming.put(None)

    def say(self, text: str) -> None:
        stamp = datetime.datetime.now().strftime("%H:%M:%S")
        self.outgoing.put(pb.ChatMessage(sender="python", message=text, timestamp=stamp))

    def next(self) -> "pb.ChatMessage":
        message = self.incoming.get(timeout=TIMEOUT)
        assert isinstance(message, pb.ChatMessage), message
        return message

    def quit(self) -> None:
        self.outgoing.put(None)


def check_chat(stub: pb_grpc.StreamingServiceStub) -> None:
    """Two clients: joins, a broadcast with sender overwritten, a leave."""
    first = ChatClient(stub)
    joined = first.next()
    assert joined.sender == "System", joined
    assert joined.message.startswith("Client(") and joined.message.endswith(") has joined the chat")
    first_name = joined.message[: -len(" has joined the chat")]
    # Addition a new client may show; an old one prints it like any System line.
    assert first.next().message == f"You are {first_name}"

    second = ChatClient(stub)
    second_joined = second.next()
    second_name = second_joined.message[: -len(" has joined the chat")]
    assert second.next().message == f"You are {second_name}"
    assert first.next().message == f"{second_name} has joined the chat"

    second.say("hello from python")
    for client in (first, second):
        message = client.next()
        assert message.sender == second_name, message
        assert message.message == "hello from python", message
        datetime.datetime.strptime(message.timestamp, "%H:%M:%S")

    second.quit()
    assert second.incoming.get(timeout=TIMEOUT) is None, "the server ends a quitting client's stream"
    left = first.next()
    assert (left.sender, left.message) == ("System", f"{second_name} has left the chat"), left
    assert first_name != second_name
    first.quit()
    assert first.incoming.get(timeout=TIMEOUT) is None


def main() -> None:
    target, upload_dir = sys.argv[1], sys.argv[2]
    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
        stub = pb_grpc.StreamingServiceStub(channel)
        check_time_stream(stub)
        check_upload(stub, upload_dir)
        check_chat(stub)
    print("python streaming client: all checks passed")


if __name__ == "__main__":
    main()

"""avatar_worker/transport/messaging.py: logged JSON data messages. No server, no network."""

from __future__ import annotations

from pathlib import Path

from avatar_worker.transport.messaging import MessageSender
from avatar_worker.transport.streamer import SendLog

from .helpers import FakeTransport, read_log


class TestMessageSender:
    def test_refused_messages_are_logged_as_not_sent(self, tmp_path: Path) -> None:
        transport = FakeTransport(accept=False)
        log = SendLog(tmp_path / "sent.jsonl")
        sender = MessageSender(transport, send_log=log)
        assert not sender.send({"type": "x", "data": {"ü": 1}}, topic="t")
        log.close()
        (record,) = read_log(tmp_path / "sent.jsonl")
        assert record["sent"] is False and record["type"] == "x" and record["to"] == []
        assert sender.sent == 0

    def test_payload_is_compact_utf8_json(self) -> None:
        transport = FakeTransport()
        MessageSender(transport).send({"type": "t", "text": "héllo"}, topic="t", destinations=["a"])
        (payload, topic, reliable, dest), = transport.sent
        assert payload == '{"type":"t","text":"héllo"}'.encode() and reliable and dest == ("a",)

"""A FedEngine device written against the wire contract alone, as a device in another language
would be: no fedcommon, no feddevice. It uses a Kafka client (aiokafka), msgpack, Ed25519
(cryptography), HTTP (urllib) and numpy, and follows docs/bring-your-own-model.md:

- enrol on fed.devices with device.enrolled, signed by its key and by the enrolment token's;
- heartbeat with signed device.heartbeat_sent;
- read its partition of fed.device.commands, act only on train.requested signed by the
  coordinator (fe-signer / fe-signature headers), for itself;
- fetch the model from the gateway signed with its key, check the sha256, parse safetensors;
- train the task's MLP (64-64-10, ReLU) with hand-written numpy SGD on its share of digits;
- answer with update.submitted: the deltas in the model file's tensor order, in the FEA1 array
  layout, signed over the update payload.

    python examples/wire-only/wire_client.py --token-file fleet.token --state-dir state/w0 \\
        --device-id wire-0 --gateway http://127.0.0.1:8000 --bootstrap-servers HOST:PORT \\
        --share 0 --shares 4
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import struct
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

# --- encoding: msgpack maps, ISO 8601 times, UUIDs as text, bytes as bin ------------------


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def canonical(value: Any) -> bytes:
    """msgpack with map keys sorted at every level: what enrolment signatures cover."""

    def sort(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: sort(v[k]) for k in sorted(v)}
        if isinstance(v, list):
            return [sort(i) for i in v]
        return v

    return msgpack.packb(sort(value))


def u16_text(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<H", len(raw)) + raw


def arrays_bytes(arrays: list[np.ndarray]) -> bytes:
    """The FEA1 layout: magic, u32 count, then per array dtype text, ndim, dims, data (LE)."""
    parts = [b"FEA1", struct.pack("<I", len(arrays))]
    for array in arrays:
        little = np.ascontiguousarray(array, dtype="<f4")
        parts += [
            struct.pack("<B", 3),
            b"<f4",
            struct.pack(f"<B{little.ndim}I", little.ndim, *little.shape),
        ]
        parts.append(little.tobytes())
    return b"".join(parts)


def safetensors_arrays(data: bytes) -> tuple[list[str], dict[str, np.ndarray]]:
    """Parse a model file: u64 header length, JSON header, data; the update order is the
    header's __metadata__["fedengine.tensor_order"]."""
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    body = data[8 + length :]
    order = json.loads(header["__metadata__"]["fedengine.tensor_order"])
    tensors = {}
    for name in order:
        entry = header[name]
        if entry["dtype"] != "F32":
            raise ValueError(f"{name}: only F32 tensors are handled here")
        begin, end = entry["data_offsets"]
        tensors[name] = np.frombuffer(body[begin:end], "<f4").reshape(entry["shape"]).copy()
    return order, tensors


# --- the device -------------------------------------------------------------------------------


class WireDevice:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.prefix = args.topic_prefix
        self.device_id = args.device_id
        args.state_dir.mkdir(parents=True, exist_ok=True)
        key_file = args.state_dir / "identity.key"
        if not key_file.exists():
            key_file.write_bytes(Ed25519PrivateKey.generate().private_bytes_raw())
            key_file.chmod(0o600)
        self.key = Ed25519PrivateKey.from_private_bytes(key_file.read_bytes())
        token_text = args.token_file.read_text().strip()
        body = token_text.removeprefix("fet1.")
        self.token = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        self.coordinator_key = Ed25519PublicKey.from_public_bytes(
            bytes.fromhex(self.token["coordinator"])
        )
        self.x, self.y = self.my_share(args.share, args.shares)
        self.answered: set[str] = set()

    @staticmethod
    def my_share(share: int, shares: int) -> tuple[np.ndarray, np.ndarray]:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        features, labels = load_digits(return_X_y=True)
        x = (features / 16.0).astype(np.float32)
        x_train, _, y_train, _ = train_test_split(
            x, labels, test_size=0.2, random_state=0, stratify=labels
        )
        mine = np.array_split(np.random.default_rng(0).permutation(len(x_train)), shares)[share]
        return x_train[mine], y_train[mine].astype(np.int64)

    def topic(self, base: str) -> str:
        return self.prefix + base

    def envelope(self, kind: str, **fields: Any) -> dict[str, Any]:
        return {
            "schema_version": 1,
            "message_id": str(uuid.uuid4()),
            "sent_at": now_iso(),
            "producer": "wire-client",
            "type": kind,
            **fields,
        }

    def enrolment(self) -> dict[str, Any]:
        message = self.envelope(
            "device.enrolled",
            device_id=self.device_id,
            device_name=f"wire-only device {self.device_id}",
            device_type="desktop",
            public_key=self.key.public_key().public_bytes_raw(),
            fleet=self.token["fleet"],
            enrolment_token_id=self.token["id"],
        )
        payload = b"fedengine-enrolment-v2" + canonical(message)
        token_key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(self.token["key"]))
        message["signature"] = self.key.sign(payload)
        message["token_signature"] = token_key.sign(payload)
        return message

    def heartbeat(self, sequence: int) -> dict[str, Any]:
        message = self.envelope(
            "device.heartbeat_sent", device_id=self.device_id, sequence=sequence
        )
        sent_at_us = int(datetime.fromisoformat(message["sent_at"]).timestamp() * 1_000_000)
        payload = (
            b"fedengine-heartbeat-v1"
            + u16_text(self.device_id)
            + struct.pack("<Qq", sequence, sent_at_us)
        )
        message["signature"] = self.key.sign(payload)
        return message

    def from_coordinator(self, record: Any) -> bool:
        """The service signature over topic, key and value, each 8-byte-length-prefixed."""
        headers = dict(record.headers or ())
        if headers.get("fe-signer") != b"coordinator":
            return False
        parts = [b"fedengine/message/v1", record.topic.encode(), record.key or b"", record.value]
        signed = b"".join(len(p).to_bytes(8, "little") + p for p in parts)
        try:
            self.coordinator_key.verify(headers.get("fe-signature", b""), signed)
        except Exception:
            return False
        return True

    def fetch_model(self, task_id: str, version: int) -> bytes:
        sent_at_us = time.time_ns() // 1000
        payload = (
            b"fedengine-model-fetch-v1"
            + u16_text(self.device_id)
            + uuid.UUID(task_id).bytes
            + struct.pack("<Iq", version, sent_at_us)
        )
        request = urllib.request.Request(
            f"{self.args.gateway}/api/federated/devices/{self.device_id}/tasks/{task_id}/models/{version}",
            headers={
                "X-Device-Sent-At": str(sent_at_us),
                "X-Device-Signature": self.key.sign(payload).hex(),
            },
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.read()

    def train(
        self, tensors: dict[str, np.ndarray], request: dict[str, Any]
    ) -> dict[str, np.ndarray]:
        """The MLP net.1 (Linear 64->64), ReLU, net.3 (Linear 64->10), trained by hand."""
        w1, b1 = tensors["net.1.weight"].copy(), tensors["net.1.bias"].copy()
        w2, b2 = tensors["net.3.weight"].copy(), tensors["net.3.bias"].copy()
        rng = np.random.default_rng(request["seed"] * 7919 + request["round_number"])
        lr, size = request["learning_rate"], request["batch_size"]
        for _ in range(request["local_epochs"]):
            order = rng.permutation(len(self.x))
            for begin in range(0, len(order), size):
                x, y = self.x[order[begin : begin + size]], self.y[order[begin : begin + size]]
                hidden = np.maximum(x @ w1.T + b1, 0)
                logits = hidden @ w2.T + b2
                p = np.exp(logits - logits.max(axis=1, keepdims=True))
                p /= p.sum(axis=1, keepdims=True)
                p[np.arange(len(y)), y] -= 1
                grad_logits = p / len(y)
                grad_hidden = (grad_logits @ w2) * (hidden > 0)
                w2 -= lr * grad_logits.T @ hidden
                b2 -= lr * grad_logits.sum(axis=0)
                w1 -= lr * grad_hidden.T @ x
                b1 -= lr * grad_hidden.sum(axis=0)
        return {"net.1.weight": w1, "net.1.bias": b1, "net.3.weight": w2, "net.3.bias": b2}

    def update(
        self,
        request: dict[str, Any],
        order: list[str],
        before: dict[str, np.ndarray],
        after: dict[str, np.ndarray],
        began: float,
    ) -> dict[str, Any]:
        update = arrays_bytes([after[name] - before[name] for name in order])
        payload = (
            b"fedengine-update-v1"
            + uuid.UUID(request["task_id"]).bytes
            + uuid.UUID(request["round_id"]).bytes
            + u16_text(self.device_id)
            + struct.pack("<IIQ", request["round_number"], request["model_version"], len(self.x))
            + hashlib.sha256(update).digest()
        )
        return self.envelope(
            "update.submitted",
            round_id=request["round_id"],
            correlation_id=request["message_id"],
            task_id=request["task_id"],
            device_id=self.device_id,
            round_number=request["round_number"],
            model_version=request["model_version"],
            num_examples=len(self.x),
            update=update,
            metrics={"train_loss": 0.0, "train_accuracy": 0.0, "duration_s": time.time() - began},
            signature=self.key.sign(payload),
        )

    async def run(self) -> None:
        servers = self.args.bootstrap_servers
        producer = AIOKafkaProducer(bootstrap_servers=servers, acks="all")
        consumer = AIOKafkaConsumer(
            bootstrap_servers=servers, group_id=f"{self.prefix}device.{self.device_id}",
            enable_auto_commit=False, auto_offset_reset="latest",
        )  # fmt: skip
        await producer.start()
        await consumer.start()
        commands = self.topic("fed.device.commands")
        partitions = sorted(consumer.partitions_for_topic(commands) or [])
        while not partitions:
            await asyncio.sleep(0.5)
            await consumer._client.force_metadata_update()
            partitions = sorted(consumer.partitions_for_topic(commands) or [])
        mine = TopicPartition(
            commands, DefaultPartitioner()(self.device_id.encode(), partitions, partitions)
        )
        consumer.assign([mine])
        await consumer.position(mine)
        key = self.device_id.encode()
        await producer.send_and_wait(
            self.topic("fed.devices"), msgpack.packb(self.enrolment()), key=key
        )
        print(f"{self.device_id}: enrolment sent", flush=True)

        async def beat() -> None:
            while True:
                sequence = time.time_ns() // 1_000_000
                value = msgpack.packb(self.heartbeat(sequence))
                await producer.send_and_wait(self.topic("fed.devices"), value, key=key)
                await asyncio.sleep(1.0)

        beats = asyncio.create_task(beat())
        try:
            while True:
                batches = await consumer.getmany(timeout_ms=1000)
                for records in batches.values():
                    for record in records:
                        if record.key == key and self.from_coordinator(record):
                            await self.handle(producer, msgpack.unpackb(record.value))
                        await consumer.commit({mine: record.offset + 1})
        finally:
            beats.cancel()
            await consumer.stop()
            await producer.stop()

    async def handle(self, producer: AIOKafkaProducer, request: dict[str, Any]) -> None:
        if request.get("type") != "train.requested" or request["device_id"] != self.device_id:
            return
        if request["round_id"] in self.answered or request.get("secure_aggregation"):
            return
        began = time.time()
        data = await asyncio.to_thread(
            self.fetch_model, request["task_id"], request["model_version"]
        )
        if hashlib.sha256(data).hexdigest() != request["model_sha256"]:
            print(f"{self.device_id}: model bytes do not match the sha256; no update", flush=True)
            return
        order, before = safetensors_arrays(data)
        after = await asyncio.to_thread(self.train, before, request)
        message = self.update(request, order, before, after, began)
        await producer.send_and_wait(
            self.topic("fed.updates"), msgpack.packb(message), key=request["task_id"].encode()
        )
        self.answered.add(request["round_id"])
        print(f"{self.device_id}: sent an update for round {request['round_number']}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--token-file", type=Path, required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--device-id", required=True)
    parser.add_argument("--gateway", required=True)
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--topic-prefix", default="")
    parser.add_argument("--share", type=int, default=0)
    parser.add_argument("--shares", type=int, default=1)
    asyncio.run(WireDevice(parser.parse_args()).run())


if __name__ == "__main__":
    main()

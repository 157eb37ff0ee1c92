"""An SQS queue read by a sensor: receive a bounded number of messages, delete the handled ones.

The queue holds S3 event notifications (see ``forecast_assets.sqs_sensor``). Receiving hides a
message for ``visibility_timeout`` seconds; a message not deleted by then is delivered again.
That is the whole protocol: a reader deletes what it has dealt with and lets SQS bring back the
rest, so a reader that fails half-way loses nothing.

Three SQS actions and no others: ReceiveMessage, DeleteMessage (DeleteMessageBatch is
authorized as it) and GetQueueAttributes (``iam/new-files-queue-policy.json``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import boto3
import dagster as dg
from botocore.config import Config
from pydantic import Field, PrivateAttr

# SQS's own limits: ReceiveMessage and DeleteMessageBatch take at most 10 messages per call.
MAX_PER_CALL = 10
BOTO_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5})


@dataclass(frozen=True)
class QueueMessage:
    message_id: str
    receipt_handle: str
    body: str
    receive_count: int
    """How often SQS has delivered it (1 the first time)."""


@dataclass(frozen=True)
class FailedDelete:
    message_id: str
    reason: str


class SqsQueue(dg.ConfigurableResource):
    """A standard SQS queue, by its URL. Credentials come from boto3's usual chain; the region
    is ``region_name`` (the queue's own, that of the bucket whose events it receives)."""

    queue_url: str = Field(description="https://sqs.<region>.amazonaws.com/<account>/<name>")
    region_name: str | None = None
    wait_seconds: int = Field(
        default=1,
        description="Long-poll wait of each ReceiveMessage (0-20 s). Long polling asks every SQS "
        "server, so an empty answer means an empty queue; a short poll samples a few and can "
        "answer nothing while messages wait. Only the last, empty, call waits.",
    )
    _client: Any = PrivateAttr(default=None)

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = boto3.client("sqs", region_name=self.region_name, config=BOTO_CONFIG)
        return self._client

    def receive(self, *, max_messages: int, visibility_timeout: int) -> list[QueueMessage]:
        """Up to ``max_messages`` messages, each hidden for ``visibility_timeout`` seconds.

        Stops at the first empty answer. A message delivered twice within the call (its
        visibility ran out mid-way) is kept once, with its newest receipt handle: only that one
        deletes it.
        """
        found: dict[str, QueueMessage] = {}
        received = 0
        while received < max_messages:
            response = self.client.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=min(MAX_PER_CALL, max_messages - received),
                VisibilityTimeout=visibility_timeout,
                WaitTimeSeconds=self.wait_seconds,
                MessageSystemAttributeNames=["ApproximateReceiveCount"],
            )
            messages = response.get("Messages", [])
            if not messages:
                break
            received += len(messages)
            for message in messages:
                found[message["MessageId"]] = QueueMessage(
                    message_id=message["MessageId"],
                    receipt_handle=message["ReceiptHandle"],
                    body=message.get("Body", ""),
                    receive_count=int(
                        message.get("Attributes", {}).get("ApproximateReceiveCount", 1)
                    ),
                )
        return list(found.values())

    def delete(self, messages: Sequence[QueueMessage]) -> list[FailedDelete]:
        """Delete ``messages``, ten per DeleteMessageBatch call; the ones SQS refused, and why.

        A refused delete is not an error here: the message comes back after its visibility
        timeout and is handled again, which the caller makes harmless.
        """
        failed: list[FailedDelete] = []
        for start in range(0, len(messages), MAX_PER_CALL):
            chunk = messages[start : start + MAX_PER_CALL]
            response = self.client.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m.receipt_handle} for i, m in enumerate(chunk)
                ],
            )
            for entry in response.get("Failed", []):
                message = chunk[int(entry["Id"])]
                failed.append(
                    FailedDelete(
                        message.message_id, f"{entry.get('Code')}: {entry.get('Message', '')}"
                    )
                )
        return failed

    def backlog(self) -> dict[str, int]:
        """SQS's approximate counts: ``visible`` (waiting), ``in_flight`` (received, not yet
        deleted or back), ``delayed``."""
        attributes = self.client.get_queue_attributes(
            QueueUrl=self.queue_url,
            AttributeNames=[
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesNotVisible",
                "ApproximateNumberOfMessagesDelayed",
            ],
        )["Attributes"]
        return {
            "visible": int(attributes.get("ApproximateNumberOfMessages", 0)),
            "in_flight": int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)),
            "delayed": int(attributes.get("ApproximateNumberOfMessagesDelayed", 0)),
        }

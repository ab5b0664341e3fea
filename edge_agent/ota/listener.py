"""The OTA listener: the retained ``desired`` messages of this device and its group, and which
one the device follows.

It runs in the MQTT callback, so it only parses and hands over: the newest desired state that
decides (the device's own wins over its group's) goes to a one-slot mailbox the OTA worker
takes from. Verification, download and swap all happen on the worker.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from shared.errors import PayloadError
from shared.messages import DesiredState, DesiredTarget, parse_payload
from shared.topics import Channel, Topics

log = logging.getLogger(__name__)


class DesiredListener:
    def __init__(
        self,
        topics: Topics,
        device_id: str,
        group: str | None,
        *,
        on_bad_message: Callable[[str], None],
    ) -> None:
        self.device_topic = topics.device(device_id, Channel.DESIRED)
        self.group_topic = topics.group_desired(group) if group else None
        self._addressed = {self.device_topic: DesiredTarget.device(device_id)}
        if group and self.group_topic:
            self._addressed[self.group_topic] = DesiredTarget.group(group)
        self._on_bad_message = on_bad_message
        self._desired: dict[str, DesiredState] = {}
        self._pending: DesiredState | None = None
        self._wakeup = threading.Condition()

    @property
    def topics(self) -> list[str]:
        return list(self._addressed)

    def on_message(self, topic: str, payload: bytes, _retained: bool) -> None:
        if topic not in self._addressed:
            return
        if not payload:
            # A cleared retained message: no desired state on this topic any more. Clearing the
            # device's own falls back to its group's at once, as it would after a restart.
            self._desired.pop(topic, None)
            self._hand_over()
            return
        try:
            desired = parse_payload(DesiredState, payload)
            if desired.target != self._addressed[topic]:
                # The signature, checked on the worker, proves who named the target; the topic
                # must stand for the same one.
                raise PayloadError(f"a desired state for {desired.target} on the topic {topic}")
        except PayloadError as exc:
            # Whatever stood on this topic is replaced by something we cannot use. That is the
            # device's failure only if this topic decides what it runs (or is its own): garbage
            # on the group topic does not touch a device that follows its own desired state.
            deciding = self._deciding_topic()
            self._desired.pop(topic, None)
            log.warning("desired state refused", extra={"topic": topic, "error": str(exc)})
            if topic in (self.device_topic, deciding):
                self._on_bad_message(f"bad desired message: {exc}"[:500])
            return
        self._desired[topic] = desired
        self._hand_over()

    def _deciding_topic(self) -> str | None:
        """The topic whose desired state this device follows: its own wins over its group's."""
        if self.device_topic in self._desired:
            return self.device_topic
        if self.group_topic is not None and self.group_topic in self._desired:
            return self.group_topic
        return None

    def _hand_over(self) -> None:
        topic = self._deciding_topic()
        if topic is None:
            return
        with self._wakeup:
            self._pending = self._desired[topic]
            self._wakeup.notify_all()

    # ----------------------------------------------------------------- the worker's side
    def take(self, timeout_s: float) -> DesiredState | None:
        """The newest desired state handed over since the last take, waiting up to
        ``timeout_s`` for one."""
        with self._wakeup:
            if self._pending is None:
                self._wakeup.wait(timeout_s)
            desired, self._pending = self._pending, None
            return desired

    def superseded(self) -> bool:
        """A newer desired state is waiting (the worker drops what it is doing for it)."""
        with self._wakeup:
            return self._pending is not None

    def wake(self) -> None:
        with self._wakeup:
            self._wakeup.notify_all()

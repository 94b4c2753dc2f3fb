"""Feedback without a database: signed prediction tokens, and the late labels that redeem them.

Every prediction carries a ``feedback_token``: URL-safe base64 (no padding) of a
packed binary payload and its MAC, HMAC-SHA256 under ``UQ_FEEDBACK_KEY``
truncated to :data:`MAC_BYTES` bytes. The payload, big-endian:

=========  =====  ==========================================================
version    1 B    :data:`VERSION`
model      4 B    the first 4 bytes of SHA-256 of the model tag
issued     4 B    Unix time in seconds
nonce      6 B    random: two identical predictions get different tokens
n_samples  2 B    N (capped at 65535)
label      2 B    the predicted class
reasons    1 B    flag reasons as bits (1 error_risk, 2 novelty)
set        C/8 B  the conformal prediction set, class c at bit c % 8 of byte c // 8
=========  =====  ==========================================================

With 10 classes that is 22 + 12 = 34 bytes, 46 characters; a token stays within
200 characters up to 944 classes. ``issued`` and ``nonce`` together are the
``prediction_id`` (20 hex digits) that the prediction log and the feedback log
both record, so a late label joins its prediction.

Any replica that shares the key verifies a token on its own. Each replica
remembers the tokens it has counted, as 64-bit fingerprints (of the MAC) grouped
by the hour they were issued, at most ``UQ_FEEDBACK_REPLAY_MEMORY`` of them
(about 70 bytes each); groups older than the expiry are forgotten. When the memory
is full, the oldest hour is forgotten and from then on tokens issued in it or
before are refused ("too old") instead of risking a second count. So a token
counts at most once per replica; across replicas, at most once per replica it
reaches (routing a token's every label to one replica, or a shared store, would be
needed for once in all).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import json
import logging
import os
import secrets
import struct
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from artifacts.inputs import json_type

logger = logging.getLogger(__name__)

VERSION = 1
MAC_BYTES = 12
_HEADER = struct.Struct(">B4sI6sHHB")  # version, model, issued, nonce, n_samples, label, reasons
REASON_BITS = {"error_risk": 1, "novelty": 2}
MAX_TOKEN_CHARS = 200
#: A token issued up to this far in a verifying replica's future is accepted (clock skew).
CLOCK_SKEW_SECONDS = 300
SECONDS_PER_BUCKET = 3600
#: Most items in one POST /feedback.
MAX_ITEMS = 1000
#: Longest label string an error message repeats.
MAX_SHOWN_CHARS = 40


def model_hash(tag: str) -> bytes:
    return hashlib.sha256(tag.encode()).digest()[:4]


def token_chars(classes: int) -> int:
    """Length of a token for a model with ``classes`` classes."""
    payload = _HEADER.size + (classes + 7) // 8 + MAC_BYTES
    return -(-payload * 4 // 3)


@dataclasses.dataclass(frozen=True)
class TokenContent:
    """What a verified token says about its prediction."""

    issued: int  # Unix seconds
    prediction_id: str  # issued and nonce, hex
    n_samples: int
    label: int
    reasons: list[str]
    prediction_set: frozenset[int]
    fingerprint: int  # 64 bits of the MAC, for replay detection


class FeedbackError(ValueError):
    """A feedback item refused: ``problem`` names the metrics label, ``status`` the HTTP one."""

    def __init__(self, problem: str, status: int, message: str) -> None:
        super().__init__(message)
        self.problem, self.status, self.message = problem, status, message


class Signer:
    """Issues and verifies the tokens of one served model."""

    def __init__(self, key: bytes, tag: str, classes: int, max_age_seconds: float) -> None:
        self.key, self.tag, self.classes = key, tag, classes
        self.model = model_hash(tag)
        self.max_age_seconds = max_age_seconds
        self.set_bytes = (classes + 7) // 8
        self.length = _HEADER.size + self.set_bytes + MAC_BYTES
        self._keyed = hmac.new(key, digestmod=hashlib.sha256)  # copied per token: no re-keying

    def _mac(self, payload: bytes) -> bytes:
        mac = self._keyed.copy()
        mac.update(payload)
        return mac.digest()[:MAC_BYTES]

    @staticmethod
    def key_from(setting: str | None) -> bytes:
        """UQ_FEEDBACK_KEY's bytes; without it, a random key of this process (logged)."""
        if setting:
            return setting.encode()
        logger.warning("UQ_FEEDBACK_KEY is not set: feedback tokens are signed with a random key "
                       "of this process, so other replicas and restarts will refuse them; set "
                       "the same UQ_FEEDBACK_KEY on every replica")
        return secrets.token_bytes(32)

    def issue(self, n_samples: int | np.ndarray, labels: np.ndarray, reasons: Sequence[int],
              prediction_sets: np.ndarray, issued: int | None = None) -> list[str]:
        """One token per row: ``n_samples`` one count or one per row ``[batch]``,
        ``labels`` ``[batch]``, ``reasons`` (bits) ``[batch]``, ``prediction_sets``
        ``[batch, classes]`` bool."""
        issued = int(time.time()) if issued is None else issued
        nonces = os.urandom(6 * len(labels))
        masks = np.packbits(prediction_sets, axis=1, bitorder="little").tobytes()
        labels = np.asarray(labels)
        counts = np.broadcast_to(np.minimum(n_samples, 0xFFFF), labels.shape).tolist()
        size = self.set_bytes
        tokens = []
        for row, (count, label, bits) in enumerate(zip(counts, labels.tolist(), reasons,
                                                       strict=True)):
            payload = _HEADER.pack(VERSION, self.model, issued, nonces[6 * row: 6 * row + 6],
                                   count, label, bits) + masks[size * row: size * (row + 1)]
            tokens.append(base64.urlsafe_b64encode(payload + self._mac(payload))
                          .rstrip(b"=").decode("ascii"))
        return tokens

    def verify(self, token: Any, now: float | None = None) -> TokenContent:
        """The content of a token this service issued, or FeedbackError naming the problem."""
        if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN_CHARS:
            raise FeedbackError("malformed", 400, "token: expected the feedback_token string of "
                                "a prediction")
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise FeedbackError("malformed", 400, "token: not a feedback token (expected "
                                "URL-safe base64)") from None
        if len(raw) < _HEADER.size + MAC_BYTES:
            raise FeedbackError("malformed", 400, "token: not a feedback token (too short)")
        payload, mac = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
        if not hmac.compare_digest(self._mac(payload), mac):
            raise FeedbackError("forged", 403, "token: the signature does not match: the token "
                                "was altered or forged, or signed under another UQ_FEEDBACK_KEY")
        version, model, issued, nonce, n_samples, label, reasons = _HEADER.unpack_from(payload)
        if version != VERSION or model != self.model or len(raw) != self.length:
            raise FeedbackError("other_model", 409, f"token: issued for another model than "
                                f"the one served ({self.tag})")
        now = time.time() if now is None else now
        age = now - issued
        if age > self.max_age_seconds:
            raise FeedbackError("expired", 410, f"token: expired: issued {age / 3600:.1f} hours "
                                f"ago, tokens are valid for {self.max_age_seconds / 3600:g} hours "
                                "(UQ_FEEDBACK_MAX_AGE_HOURS)")
        if age < -CLOCK_SKEW_SECONDS:
            raise FeedbackError("malformed", 400, "token: issued in the future")
        mask = np.unpackbits(np.frombuffer(payload[_HEADER.size:], np.uint8),
                             bitorder="little")[: self.classes]
        return TokenContent(
            issued=issued,
            prediction_id=struct.pack(">I", issued).hex() + nonce.hex(),
            n_samples=n_samples,
            label=label,
            reasons=[name for name, bit in REASON_BITS.items() if reasons & bit],
            prediction_set=frozenset(np.flatnonzero(mask).tolist()),
            fingerprint=int.from_bytes(mac[:8], "big"),
        )


def reason_bits(error_risk: np.ndarray, novel: np.ndarray) -> list[int]:
    """Per row ``[batch]``: the flag reasons as the token's bits."""
    return (np.asarray(error_risk, np.uint8) * REASON_BITS["error_risk"]
            + np.asarray(novel, np.uint8) * REASON_BITS["novelty"]).tolist()


def prediction_id(token: str) -> str:
    """The prediction id in a token this service issued (no verification)."""
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    return (raw[5:9] + raw[9:15]).hex()


class ReplayMemory:
    """The fingerprints of the tokens this replica has counted, by the hour they were issued
    (see the module docstring for the bound)."""

    def __init__(self, capacity: int, max_age_seconds: float) -> None:
        self.capacity = capacity
        self.max_age_seconds = max_age_seconds
        self.buckets: dict[int, set[int]] = {}  # issue hour -> fingerprints
        self.size = 0
        #: tokens issued before this hour are refused: their hour was forgotten when full
        self.floor = 0

    def problem(self, content: TokenContent) -> FeedbackError | None:
        """Why ``content`` cannot be counted (already counted, or too old to tell), or None."""
        hour = content.issued // SECONDS_PER_BUCKET
        if hour < self.floor:
            return FeedbackError("too_old", 410, "token: issued before the oldest token this "
                                 "replica still remembers, so a repeat could not be told apart "
                                 "(UQ_FEEDBACK_REPLAY_MEMORY)")
        if content.fingerprint in self.buckets.get(hour, ()):
            return FeedbackError("duplicate", 409, "token: feedback for this prediction was "
                                 "already counted")
        return None

    def remember(self, content: TokenContent, now: float | None = None) -> None:
        hour = content.issued // SECONDS_PER_BUCKET
        self.buckets.setdefault(hour, set()).add(content.fingerprint)
        self.size += 1
        now = time.time() if now is None else now
        expired = (now - self.max_age_seconds) // SECONDS_PER_BUCKET - 1
        while self.buckets and (self.size > self.capacity or min(self.buckets) < expired):
            oldest = min(self.buckets)
            self.size -= len(self.buckets.pop(oldest))
            if oldest >= expired:  # forgotten for room, not for age
                self.floor = max(self.floor, oldest + 1)


@dataclasses.dataclass(frozen=True)
class Judged:
    """One accepted feedback item: the token's prediction against the caller's label."""

    content: TokenContent
    label: int

    @property
    def correct(self) -> bool:
        return self.label == self.content.label

    @property
    def covered(self) -> bool:
        return self.label in self.content.prediction_set


class Rejected(ValueError):
    """A feedback request refused as a whole: each problem of ``problems`` (one per
    refused item) is counted, nothing else changes."""

    def __init__(self, status: int, message: str, problems: list[str]) -> None:
        super().__init__(message)
        self.status, self.message, self.problems = status, message, problems


class Desk:
    """Takes ``POST /feedback`` bodies for one served model: all items or none."""

    def __init__(self, signer: Signer, memory: ReplayMemory, class_names: Sequence[str]) -> None:
        self.signer, self.memory = signer, memory
        self.class_names = list(class_names)
        self.class_index = {name: index for index, name in enumerate(self.class_names)}

    def receive(self, body: Any, now: float | None = None) -> list[Judged]:
        """The judged items of ``body`` (``{"token", "label"}`` or a list of them), all
        remembered as counted; or Rejected, with nothing remembered."""
        single = isinstance(body, dict)
        items = [body] if single else body
        if not isinstance(items, list) or not items:
            raise Rejected(400, 'expected {"token": ..., "label": ...} or a non-empty list of '
                           "them", ["malformed"])
        if len(items) > MAX_ITEMS:
            raise Rejected(400, f"at most {MAX_ITEMS} feedback items per request, got "
                           f"{len(items)}", ["malformed"])
        now = time.time() if now is None else now
        judged, errors, seen = [], [], set()
        for index, item in enumerate(items):
            try:
                judged.append(self._judge(item, now, seen))
            except FeedbackError as error:
                errors.append((index, error))
        if errors:
            raise Rejected(errors[0][1].status,
                           "; ".join(error.message if single else _at_item(index, error.message)
                                     for index, error in errors),
                           [error.problem for _, error in errors])
        for item in judged:
            self.memory.remember(item.content, now)
        return judged

    def _judge(self, item: Any, now: float, seen: set[int]) -> Judged:
        if not isinstance(item, dict) or set(item) != {"token", "label"}:
            raise FeedbackError("malformed", 400, f'expected an object with "token" and '
                                f'"label", got {_item_kind(item)}')
        content = self.signer.verify(item["token"], now)
        label = self._label(item["label"])
        problem = self.memory.problem(content)
        if problem is None and content.fingerprint in seen:
            problem = FeedbackError("duplicate", 409, "token: repeated in this request")
        if problem is not None:
            raise problem
        seen.add(content.fingerprint)
        return Judged(content, label)

    def _label(self, label: Any) -> int:
        if isinstance(label, str) and label in self.class_index:
            return self.class_index[label]
        if isinstance(label, int) and not isinstance(label, bool) and (
                0 <= label < len(self.class_names)):
            return label
        raise FeedbackError("unknown_label", 400, f"label: expected a class index 0 to "
                            f"{len(self.class_names) - 1} or a class name "
                            f"({', '.join(self.class_names[:12])}"
                            f"{', ...' if len(self.class_names) > 12 else ''}), got "
                            f"{_shown(label)}")


def _at_item(index: int, message: str) -> str:
    """A message about item ``index`` of a list: ``0.token: ...``, or ``0: ...`` when the
    message names no field of the item."""
    located = message.startswith(("token:", "label:"))
    return f"{index}.{message}" if located else f"{index}: {message}"


def _item_kind(item: Any) -> str:
    """What a feedback item that is not ``{"token", "label"}`` is, for a message."""
    if not isinstance(item, dict):
        return json_type(item)
    if not item:
        return "an empty object"
    keys = sorted(item)
    return (f"an object with the keys {', '.join(map(json.dumps, keys[:5]))}"
            f"{', ...' if len(keys) > 5 else ''}")


def _shown(value: Any) -> str:
    """A JSON value as a message shows it: a number or a short string as JSON, else its
    kind."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, str) and len(value) <= MAX_SHOWN_CHARS:
        return json.dumps(value)
    return json_type(value)

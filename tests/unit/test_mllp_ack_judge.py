"""The ACK discipline (reliability rows 7-10), table-driven over raw ACK payloads."""

from __future__ import annotations

import pytest

from adapter.hl7.ack import Ack
from adapter.hl7.ack_judge import AckOutcome, judge_ack

SENT = "CTRL-42"
MSH = "MSH|^~\\&|RIS|RAD|RTPLAN|ONC|20240101120001||ACK^O01|A1|P|2.4"


def ack(msa: str, *extra: str) -> bytes:
    return "\r".join([MSH, msa, *extra]).encode()


D, R, X, C = AckOutcome.DELIVERED, AckOutcome.REJECTED, AckOutcome.INVALID, AckOutcome.COMMITTED

CASES: list[tuple[str, bytes | None, bool, AckOutcome]] = [
    ("AA matching", ack(f"MSA|AA|{SENT}"), False, D),
    ("AA matching, commit-only", ack(f"MSA|AA|{SENT}"), True, D),
    ("lower-case code is not a code", ack(f"MSA|aa|{SENT}"), False, X),
    ("AA trailing CR and LF", ack(f"MSA|AA|{SENT}") + b"\r\n", False, D),
    ("AE", ack(f"MSA|AE|{SENT}|bad field"), False, R),
    ("AR", ack(f"MSA|AR|{SENT}"), False, R),
    ("CE", ack(f"MSA|CE|{SENT}"), False, R),
    ("CR", ack(f"MSA|CR|{SENT}"), True, R),
    ("AR without MSA-2 (could not parse ours)", ack("MSA|AR|"), False, R),
    ("CA, application ACK expected", ack(f"MSA|CA|{SENT}"), False, C),
    ("CA, commit-only profile", ack(f"MSA|CA|{SENT}"), True, D),
    ("AA for another message", ack("MSA|AA|CTRL-41"), False, X),
    ("AE for another message", ack("MSA|AE|CTRL-41"), False, X),
    ("AA with empty MSA-2", ack("MSA|AA|"), False, X),
    ("MSA-2 prefix only", ack(f"MSA|AA|{SENT}0"), False, X),
    ("no MSA", MSH.encode(), False, X),
    ("empty", b"", False, X),
    ("whitespace", b"\r\n", False, X),
    ("None (no frame)", None, False, X),
    ("garbage", b"\x00\xff\x13garbage", False, X),
    ("unknown code", ack(f"MSA|ZZ|{SENT}"), False, X),
    ("MSA only, no MSH", f"MSA|AA|{SENT}".encode(), False, X),
    ("other field separator", ack(f"MSA|AA|{SENT}").replace(b"|", b"#"), False, D),
]


@pytest.mark.parametrize(("raw", "commit_only", "outcome"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])  # fmt: skip
def test_judge(raw: bytes | None, commit_only: bool, outcome: AckOutcome) -> None:
    verdict = judge_ack(SENT, raw, commit_only=commit_only)
    assert verdict.outcome is outcome, verdict.reason
    assert verdict.resend == (outcome is AckOutcome.INVALID)
    assert verdict.delivered == (outcome is AckOutcome.DELIVERED)


def test_rejection_keeps_msa3_and_err_code_out_of_reason() -> None:
    raw = ack(f"MSA|AE|{SENT}|Unknown patient ZZCANARY", "ERR|||103^Table value not found|E")
    verdict = judge_ack(SENT, raw, commit_only=False)
    assert verdict.outcome is AckOutcome.REJECTED
    assert verdict.text == "Unknown patient ZZCANARY"
    assert verdict.error_code == "103"
    assert "ZZCANARY" not in verdict.reason and SENT in verdict.reason


def test_err1_code_before_v25() -> None:
    verdict = judge_ack(SENT, ack(f"MSA|AR|{SENT}", "ERR|PID^1^3^204"))
    assert verdict.outcome is AckOutcome.REJECTED and verdict.error_code == "204"


def test_parsed_ack_objects_are_accepted() -> None:
    assert judge_ack(SENT, Ack(True, "AA", SENT)).delivered
    assert judge_ack(SENT, Ack(True, "CA", SENT)).outcome is AckOutcome.COMMITTED
    assert judge_ack(SENT, Ack(False, problem="no MSA segment")).reason == "no MSA segment"


def test_reason_is_bounded_for_hostile_ids() -> None:
    verdict = judge_ack(SENT, ack("MSA|AA|" + "x\x01" * 500))
    assert verdict.outcome is AckOutcome.INVALID
    assert len(verdict.reason) < 120 and "\x01" not in verdict.reason

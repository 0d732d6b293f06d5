"""The reader's two paths agree: on every fixture, pydicom's own test files, the hostile
files and a seeded fuzzed corpus, the fast path gives exactly the pydicom path's result, or
it deferred that file to the pydicom path (and says why). See docs/ingest.md, "The reader's
two paths"."""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file

from adapter.dicom import fast
from adapter.dicom.group import group_studies
from adapter.dicom.header import read_header
from adapter.dicom.limits import ReadLimits
from adapter.dicom.models import InstanceHeader, Rejection
from tests.support import FIXTURES, ROOT, hostile

LONDON = ZoneInfo("Europe/London")
Result = InstanceHeader | Rejection


def both(path: Path, limits: ReadLimits | None = None) -> tuple[Result, Result]:
    limits = limits or ReadLimits()
    quick = read_header(path, default_tz=LONDON, limits=limits)
    slow = read_header(path, default_tz=LONDON, limits=limits, fast=False)
    return quick, slow


def agree(paths: list[Path], limits: ReadLimits | None = None) -> Counter[str]:
    """Assert the paths agree on every file; count who decided ("fast" or the reason)."""
    deciders: Counter[str] = Counter()
    for path in paths:
        quick, slow = both(path, limits)
        assert quick == slow, path.name
        assert type(quick) is type(slow)
        if isinstance(quick, Rejection):
            assert (quick.kind, quick.reason) == (slow.kind, slow.reason), path.name
        assert slow.deferred == ""
        deciders[quick.deferred or ("fast" if isinstance(quick, InstanceHeader) else "meta")] += 1
    return deciders


def fixture_files() -> list[Path]:
    return sorted(p for p in (FIXTURES / "dicom").rglob("*.dcm"))


def pydicom_files() -> list[Path]:
    ct = get_testdata_file("CT_small.dcm", download=False)
    assert ct is not None
    return sorted(p for p in Path(ct).parent.iterdir() if p.is_file())


def test_fixtures_agree_and_most_take_the_fast_path() -> None:
    files = fixture_files()
    deciders = agree(files)
    # Only the ISO 2022 (Japanese) set needs pydicom's decoder; everything else is fast.
    jp = [p for p in files if p.parent.name == "charset-jp"]
    assert jp and deciders[fast.CHARSET] == len(jp)
    assert deciders["fast"] == len(files) - len(jp), deciders


def test_fixture_study_summaries_are_identical() -> None:
    files = fixture_files()
    quick = [read_header(p, default_tz=LONDON) for p in files]
    slow = [read_header(p, default_tz=LONDON, fast=False) for p in files]
    assert quick == slow
    summaries = group_studies([h for h in quick if isinstance(h, InstanceHeader)])
    assert summaries == group_studies([h for h in slow if isinstance(h, InstanceHeader)])
    assert len(summaries) == len({p.parent.name for p in files})


def test_pydicom_test_files_agree() -> None:
    deciders = agree(pydicom_files())
    # pydicom's files cover implicit VR, big endian, deflate, broken files...: some of each.
    assert deciders["fast"] >= 20, deciders
    assert deciders[fast.TRANSFER_SYNTAX] >= 10, deciders


def test_hostile_files_agree(tmp_path: Path) -> None:
    files = [
        *hostile.write_huge_length(tmp_path),
        *hostile.write_nested(tmp_path),
        *hostile.write_nested(tmp_path, depth=33),
        *hostile.write_malicious_uids(tmp_path),
        hostile.write_deflate_bomb(tmp_path, inflated=200 << 20),
    ]
    deciders = agree(files)
    # The fast path accepts none of them: each was deferred and the pydicom path rejected it.
    assert "fast" not in deciders, deciders
    for path in files:
        result = read_header(path, default_tz=LONDON)
        assert isinstance(result, Rejection)


def test_lenient_limits_agree(tmp_path: Path) -> None:
    """``strict=False`` and a small element limit go through the same equality."""
    files = fixture_files()[:20] + hostile.write_malicious_uids(tmp_path)
    agree(files, ReadLimits(strict=False))
    agree(files, ReadLimits(max_element_length=64, max_sequence_depth=1))


# --- fuzzed corpus ----------------------------------------------------------------------


def _element_offsets(data: bytes) -> list[int]:
    """Offsets of explicit-VR element headers found by a loose byte search (for mutation)."""
    known = {v.encode() for v in ("UI", "CS", "LO", "SQ", "PN", "IS", "US", "DA", "TM", "SH")}
    return [i - 4 for i in range(136, len(data) - 8) if data[i : i + 2] in known]


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to three structural or value mutations of a valid file."""
    out = bytearray(data)
    offsets = _element_offsets(data)
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(8)
        at = rng.choice(offsets) if offsets else 132
        if kind == 0:  # truncate
            del out[rng.randrange(132, len(out)) :]
        elif kind == 1 and at + 8 <= len(out):  # short length field
            struct.pack_into("<H", out, at + 6, rng.choice([0, 1, 0xFFFF, rng.randrange(65536)]))
        elif kind == 2 and at + 12 <= len(out):  # long length field
            value = rng.choice([0xFFFFFFFF, 0xFFFFFFF0, 0, rng.randrange(1 << 32)])
            struct.pack_into("<L", out, at + 8, value)
        elif kind == 3 and at + 6 <= len(out):  # VR swapped
            out[at + 4 : at + 6] = rng.choice([b"SQ", b"UN", b"OB", b"XX", b"\0\0", b"LO"])
        elif kind == 4:  # a value byte changed (bad UID characters, digits, charset bytes)
            i = rng.randrange(132, len(out))
            out[i] = rng.choice([0x2E, 0x30, 0x41, 0x5C, 0x1B, 0x00, 0x20, 0xE9, 0xFF])
        elif kind == 5:  # bytes inserted or deleted
            i = rng.randrange(132, len(out))
            if rng.random() < 0.5:
                out[i:i] = bytes(rng.randrange(256) for _ in range(rng.choice([1, 2, 4, 8])))
            else:
                del out[i : i + rng.choice([1, 2, 4, 8])]
        elif kind == 6 and at + 4 <= len(out):  # tag changed (order, duplicates, items)
            tag = rng.choice([0x00080005, 0x00080018, 0x7FE00010, 0xFFFEE000, 0xFFFEE0DD])
            struct.pack_into("<HH", out, at, tag >> 16, tag & 0xFFFF)
        elif kind == 7:  # the charset changed
            charset = rng.choice([b"ISO_IR 192", b"ISO_IR 100", b"\\ISO 2022 IR 87", b"GB18030 "])
            out += b""  # appended elements would be out of order; rewrite in place instead
            j = out.find(b"ISO_IR")
            if j > 0:
                out[j : j + len(charset)] = charset
    return bytes(out)


def fuzz_seeds() -> list[bytes]:
    picks = ["planning-ct", "planning-mr", "charset-utf8", "charset-latin1", "pet-ct"]
    seeds = []
    for folder in picks:
        seeds += [p.read_bytes() for p in sorted((FIXTURES / "dicom" / folder).glob("*.dcm"))[:3]]
    return seeds


def test_seeded_mutation_corpus_agrees(tmp_path: Path) -> None:
    rng = random.Random(20261130)
    seeds = fuzz_seeds()
    paths = []
    for i in range(400):
        path = tmp_path / f"mutant_{i:04d}.dcm"
        path.write_bytes(mutate(rng.choice(seeds), rng))
        paths.append(path)
    deciders = agree(paths)
    # The corpus exercises both sides: mutants the fast path accepts (value changes that
    # leave the structure valid) and mutants it defers for each kind of reason.
    assert deciders["fast"] >= 40, deciders
    for reason in (fast.STRUCTURE, fast.LENGTH, fast.REJECTED):
        assert deciders[reason] >= 5, deciders


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(seed=st.integers(0, 10**9), data=st.data())
def test_hypothesis_mutants_agree(seed: int, data: st.DataObject, tmp_path: Path) -> None:
    seeds = fuzz_seeds()
    base = seeds[data.draw(st.integers(0, len(seeds) - 1))]
    patch_at = data.draw(st.integers(132, len(base) - 1))
    patch = data.draw(st.binary(min_size=1, max_size=8))
    mutant = mutate(base[:patch_at] + patch + base[patch_at + len(patch) :], random.Random(seed))
    path = tmp_path / "mutant.dcm"
    path.write_bytes(mutant)
    agree([path])


# --- why a file is deferred -------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("MR_small_implicit.dcm", fast.TRANSFER_SYNTAX),
        ("MR_small_bigendian.dcm", fast.TRANSFER_SYNTAX),
        ("image_dfl.dcm", fast.TRANSFER_SYNTAX),
        ("rtplan_truncated.dcm", fast.TRANSFER_SYNTAX),  # implicit VR
    ],
)
def test_deferral_reason(name: str, reason: str) -> None:
    source = get_testdata_file(name, download=False)
    assert source is not None
    result = read_header(Path(source), default_tz=LONDON)
    assert result.deferred == reason


def test_truncated_header_is_deferred_and_quarantined_by_the_pydicom_path(
    tmp_path: Path,
) -> None:
    source = sorted((FIXTURES / "dicom" / "planning-ct").glob("*_CT_0001.dcm"))[0]
    data = source.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) // 2 if len(data) < 4096 else 1024])
    result = read_header(cut, default_tz=LONDON)
    assert isinstance(result, Rejection)
    assert result.deferred == fast.LENGTH
    assert result.reason.startswith("truncated")


def test_deep_nesting_is_deferred_and_quarantined_by_the_pydicom_path(tmp_path: Path) -> None:
    deep, defined = hostile.write_nested(tmp_path, depth=33)
    for path in (deep, defined):
        result = read_header(path, default_tz=LONDON)
        assert isinstance(result, Rejection)
        assert result.deferred == fast.DEPTH
        assert "sequence nesting deeper than 32 levels" in result.reason


def test_cli_and_reader_import_no_heavy_packages() -> None:
    """``import adapter.cli`` (every command) and reading plain files load neither pydicom
    (with numpy: 0.3 s of start-up) nor the FHIR stack (httpx, PyJWT), hl7apy or pynetdicom.
    (The PACS label's KOS builder does import pydicom, only when a label is built: the tests
    below.)"""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from zoneinfo import ZoneInfo\n"
        "import adapter.cli\n"
        "heavy = {'pydicom', 'numpy', 'httpx', 'jwt', 'cryptography', 'hl7apy', 'pynetdicom'}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & heavy))\n"
        "from adapter.dicom.walk import read_all\n"
        "headers, rejections = read_all([Path(sys.argv[1])], default_tz=ZoneInfo('UTC'))\n"
        "assert headers and not rejections, rejections\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(FIXTURES / "dicom" / "planning-ct")],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    assert out.stdout.strip().splitlines() == ["[]", "[]"], out.stdout


# What an ``rtplan ingest`` run may import only when a label KOS is built or delivered.
_LABEL_BUILDER = ("adapter.label.kos", "adapter.label.fast_kos", "adapter.label.source")
# ...and the raw-byte label path, which a run without a label must not load either.
_RAW_LABEL = ("adapter.label.raw_kos", "adapter.label.raw_title")
_INGEST_IMPORTS = (
    "import json, sys\n"
    "import adapter.cli\n"
    "code = adapter.cli.main(['ingest', sys.argv[1], '--out', sys.argv[2]])\n"
    "heavy = {'pydicom', 'numpy', 'pynetdicom', 'httpx', 'jwt', 'cryptography', 'hl7apy'}\n"
    "print(code)\n"
    "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & heavy)))\n"
    "print(json.dumps(sorted(m for m in sys.modules if m.startswith('adapter.label.'))))\n"
)


# What an ingest on the embedded default (a SQLite file) imports; PostgreSQL loads psycopg.
EMBEDDED_DEFAULT = pytest.mark.sqlite_only(reason="the imports of the embedded SQLite default")


def _ingest_imports(case: str, out: Path, *, label: bool) -> tuple[str, list[str], list[str]]:
    """Exit status, heavy packages and label modules loaded by one ``rtplan ingest`` run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTPLAN_")}
    env["RTPLAN_LABEL__ENABLED"] = "true" if label else "false"
    env["RTPLAN_OUTBOX__PATH"] = str(out / "outbox.sqlite")
    proc = subprocess.run(
        [sys.executable, "-c", _INGEST_IMPORTS, str(FIXTURES / "dicom" / case), str(out / "o")],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env=env,
    )
    code, heavy, modules = proc.stdout.strip().splitlines()[-3:]
    return code, json.loads(heavy), json.loads(modules)


@EMBEDDED_DEFAULT
def test_ingest_with_labelling_off_imports_no_label_builder_or_toolkit(tmp_path: Path) -> None:
    """``label.enabled: false``: a planning study is mapped and delivered without pydicom,
    numpy or pynetdicom, and without the KOS builder or the label delivery module."""
    code, heavy, modules = _ingest_imports("planning-ct", tmp_path, label=False)
    assert code == "0"
    assert heavy == []
    assert not set(modules) & {*_LABEL_BUILDER, *_RAW_LABEL, "adapter.label.delivery"}, modules


@EMBEDDED_DEFAULT
def test_ingest_without_a_planning_study_imports_no_toolkit(tmp_path: Path) -> None:
    """Labelling on, but no study to label (a diagnostic study is held): no KOS is built, so
    neither pydicom nor the builder is loaded; the label delivery module loads without them."""
    code, heavy, modules = _ingest_imports("diagnostic-ct", tmp_path, label=True)
    assert heavy == [], code
    assert not set(modules) & set(_LABEL_BUILDER), modules


@EMBEDDED_DEFAULT
def test_default_ingest_that_builds_a_label_imports_neither_pydicom_nor_numpy(
    tmp_path: Path,
) -> None:
    """Labelling on (the default) and a planning study in a single-byte or UTF-8 character
    set: the KOS is encoded from raw bytes (``adapter.label.raw_kos``), written to the output
    folder after the raw title check (``adapter.label.raw_title``), and neither pydicom, numpy
    nor pynetdicom is imported, nor the pydicom builders."""
    for case in ("planning-ct", "charset-latin1", "charset-utf8"):
        code, heavy, modules = _ingest_imports(case, tmp_path / case, label=True)
        assert code == "0"
        assert heavy == [], (case, heavy)
        assert {"adapter.label.raw_kos", "adapter.label.raw_title"} <= set(modules), modules
        assert not set(modules) & set(_LABEL_BUILDER), (case, modules)
        assert (tmp_path / case / "o" / "dicom").is_dir()


@EMBEDDED_DEFAULT
def test_ingest_of_an_iso_2022_study_builds_its_label_with_pydicom(tmp_path: Path) -> None:
    """The other side: ISO 2022 (code extensions) needs pydicom's builder and its check."""
    code, heavy, modules = _ingest_imports("charset-jp", tmp_path, label=True)
    assert code == "0"
    assert "pydicom" in heavy
    assert {"adapter.label.fast_kos", "adapter.label.source"} <= set(modules)


def _defined_sequence(tag: int, *items: bytes) -> bytes:
    body = b"".join(struct.pack("<HHL", 0xFFFE, 0xE000, len(i)) + i for i in items)
    return hostile.element(tag, "SQ", body)


def _identity_with(*extra: bytes) -> bytes:
    """The required attributes plus ``extra`` elements of tags between (0008,0060) and
    (0020,000D), in order."""
    e = hostile.element
    return b"".join(
        [
            e(0x00080016, "UI", hostile.CT_IMAGE.encode()),
            e(0x00080018, "UI", b"1.2.3.4.1.1"),
            e(0x00080060, "CS", b"CT"),
            *extra,
            e(0x0020000D, "UI", b"1.2.3.4"),
            e(0x0020000E, "UI", b"1.2.3.4.1"),
        ]
    )


_PIXELS = (
    hostile.element(0x00280011, "US", b"\x02\x00")
    + hostile.element(0x00280100, "US", b"\x08\x00")
    + hostile.element(0x7FE00010, "OB", b"\x00" * 4)
)


@pytest.mark.parametrize(
    ("label", "dataset", "reason"),
    [
        ("unknown VR", hostile.identity() + b"\x10\x00\x10\x00ZZ\x02\x00AB", fast.STRUCTURE),
        (
            "tags out of order",
            hostile.identity() + hostile.element(0x00100010, "PN", b"A^B"),
            fast.STRUCTURE,
        ),
        ("trailing bytes", hostile.identity() + b"\x00\x00\x00", fast.STRUCTURE),
        (
            "escape in a PN",
            _identity_with(hostile.element(0x00100010, "PN", b"\x1b$B;3")),
            fast.CHARSET,
        ),
        (
            "Rows of 4 bytes",
            hostile.identity() + hostile.element(0x00280010, "US", b"\x02\x00\x02\x00") + _PIXELS,
            fast.VALUE,
        ),
        ("invalid UID", hostile.identity(study="1.02.3"), fast.REJECTED),
        (
            "undefined sequence overrunning its defined item",
            hostile.identity()
            + _defined_sequence(
                0x00400275,
                hostile.element(0x00321064, "SQ", b"", length=0xFFFFFFFF)
                + struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF),
            )
            + struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
            + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0),
            fast.LENGTH,
        ),
    ],
)
def test_crafted_files_defer_with_their_reason(
    label: str, dataset: bytes, reason: str, tmp_path: Path
) -> None:
    path = tmp_path / "crafted.dcm"
    path.write_bytes(hostile.file_meta() + dataset)
    quick, slow = both(path)
    assert quick == slow, label
    assert quick.deferred == reason, label


def test_docs_list_every_deferral_reason() -> None:
    """docs/ingest.md names each reason the report can count, word for word."""
    reasons = {
        fast.TRANSFER_SYNTAX,
        fast.CHARSET,
        fast.STRUCTURE,
        fast.LENGTH,
        fast.DEPTH,
        fast.VALUE,
        fast.REJECTED,
    }
    text = (ROOT / "docs" / "ingest.md").read_text(encoding="utf-8")
    section = text.split("## The reader's two paths", 1)[1].split("\n## ", 1)[0]
    documented = {
        line.rsplit("|", 2)[1].strip().strip("`")
        for line in section.splitlines()
        if line.startswith("| ") and line.rstrip().endswith("` |")
    }
    assert documented == reasons

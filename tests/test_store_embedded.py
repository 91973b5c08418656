"""The embedded store: a journal file that keeps every acknowledged write across crashes."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from admin_client import KEY, Admin
from conftest import request
from origin import free_port
from pygateway.store import Change, StoreError, StoreUnavailable
from pygateway.store import embedded as embedded_module
from pygateway.store.embedded import EmbeddedStore


def opened(path: Path) -> tuple[EmbeddedStore, list[tuple[list[Change], bool]]]:
    heard: list[tuple[list[Change], bool]] = []

    def listener(changes: Sequence[Change], resync: bool) -> None:
        heard.append((list(changes), resync))

    store = EmbeddedStore(path)
    store.start(listener)
    return store, heard


def test_put_get_delete_and_indexes(tmp_path: Path) -> None:
    store, heard = opened(tmp_path / "s.jsonl")
    assert heard == [([], True)]
    entry, created = store.put("routes/1", {"uri": "/a"})
    assert created and entry.created_index == entry.modified_index == 1
    again, created = store.put("routes/1", {"uri": "/b"})
    assert not created and again.created_index == 1 and again.modified_index == 2
    store.put("routes/2", {"uri": "/c"})
    assert [e.key for e in store.items("routes/")] == ["routes/1", "routes/2"]
    assert store.delete("routes/2") is not None and store.delete("routes/2") is None
    assert [changes[0].key for changes, _ in heard[1:]] == [
        "routes/1",
        "routes/1",
        "routes/2",
        "routes/2",
    ]
    assert heard[-1][0][0].entry is None and heard[-1][1] is False
    store.close()


def wait_for(check: Any, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, "not true in time"
        time.sleep(0.02)


def test_a_key_with_a_ttl_is_deleted_when_it_expires_journaled(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    store, heard = opened(path)
    store.put("routes/far", {"uri": "/f"}, ttl=1e12)  # beyond threading's longest wait
    store.put("routes/short", {"uri": "/s"}, ttl=0.3)
    store.put("routes/long", {"uri": "/l"}, ttl=3600)
    store.put("routes/kept", {"uri": "/k"}, ttl=0.3)
    store.put("routes/kept", {"uri": "/k2"})  # a put without ttl: permanent again
    wait_for(lambda: store.get("routes/short") is None)
    deleted = [c.key for changes, _ in heard for c in changes if c.entry is None]
    assert deleted == ["routes/short"]
    time.sleep(0.4)
    assert store.get("routes/kept") is not None and store.get("routes/long") is not None
    store.close()
    # the expiry is in the journal: it holds across a restart, and a key that expired while
    # the store was closed is deleted before the listener hears of anything
    lines = [json.loads(line) for line in path.read_bytes().splitlines()]
    expiring = ["routes/far", "routes/short", "routes/long", "routes/kept"]
    assert [r["k"] for r in lines if "e" in r] == expiring
    reopened = EmbeddedStore(path)
    reopened.start(lambda changes, resync: None)
    reopened.put("routes/soon", {"uri": "/n"}, ttl=0.2)
    reopened.close()
    time.sleep(0.3)
    store, heard = opened(path)
    assert [c.key for c in heard[0][0]] == ["routes/far", "routes/kept", "routes/long"]
    assert store.get("routes/soon") is None
    store.close()


def test_new_ids_are_20_digit_revisions_that_keep_growing(tmp_path: Path) -> None:
    store, _ = opened(tmp_path / "s.jsonl")
    a = store.new_id()
    store.put(f"routes/{a}", {"uri": "/a"})
    store.close()
    store, heard = opened(tmp_path / "s.jsonl")
    b = store.new_id()
    assert len(a) == len(b) == 20 and int(b) > int(a)
    assert [c.key for c in heard[0][0]] == [f"routes/{a}"]
    store.close()


def test_content_and_revision_survive_a_reopen(tmp_path: Path) -> None:
    store, _ = opened(tmp_path / "s.jsonl")
    for i in range(5):
        store.put(f"upstreams/{i}", {"nodes": {"127.0.0.1:1": i}})
    store.delete("upstreams/3")
    store.close()
    store, heard = opened(tmp_path / "s.jsonl")
    assert [c.key for c in heard[0][0]] == [f"upstreams/{i}" for i in (0, 1, 2, 4)]
    entry = store.get("upstreams/4")
    assert entry is not None and entry.modified_index == 5
    assert store.put("upstreams/9", {})[0].modified_index == 7
    store.close()


def test_a_torn_last_line_does_not_prevent_start(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    store, _ = opened(path)
    store.put("routes/1", {"uri": "/a"})
    store.close()
    with open(path, "ab") as f:
        f.write(b'{"r":2,"k":"routes/2","v":{"uri"')  # a crash in the middle of a write
    store, heard = opened(path)
    assert [c.key for c in heard[0][0]] == ["routes/1"]
    store.put("routes/3", {"uri": "/c"})  # appends cleanly after the cut
    store.close()
    store, heard = opened(path)
    assert [c.key for c in heard[0][0]] == ["routes/1", "routes/3"]
    store.close()


def test_corruption_before_the_last_line_refuses_to_start(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text('{"r":1,"k":"routes/1","v":{},"c":1}\ngarbage\n{"r":2,"k":"routes/2"}\n')
    with pytest.raises(StoreUnavailable, match="corrupt at line 2"):
        EmbeddedStore(path).start(lambda c, r: None)


def test_a_second_process_cannot_open_the_same_file(tmp_path: Path) -> None:
    store, _ = opened(tmp_path / "s.jsonl")
    with pytest.raises(StoreUnavailable, match="in use"):
        EmbeddedStore(tmp_path / "s.jsonl").start(lambda c, r: None)
    store.close()


def compacting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slack: int
) -> tuple[EmbeddedStore, Path]:
    """A store in ``tmp_path/s.jsonl`` compacting after ``slack`` spare records."""
    monkeypatch.setattr(embedded_module, "COMPACT_SLACK", slack)
    path = tmp_path / "s.jsonl"
    return opened(path)[0], path


def test_compaction_keeps_content_indexes_and_revision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, path = compacting(tmp_path, monkeypatch, 10)
    store.put("routes/keep", {"uri": "/k"})
    for i in range(40):
        store.put("routes/churn", {"uri": f"/{i}"})
    store.delete("routes/churn")
    last = store.put("routes/last", {"uri": "/l"})[0]
    lines = path.read_text().splitlines()
    assert len(lines) < 20, "the journal was not compacted"
    assert not (tmp_path / "s.jsonl.tmp").exists()
    store.close()
    store, heard = opened(path)
    assert [c.key for c in heard[0][0]] == ["routes/keep", "routes/last"]
    assert store.get("routes/last") == last
    assert int(store.new_id()) > last.modified_index
    store.close()


def test_every_write_is_on_disk_even_the_one_that_triggers_a_compaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, path = compacting(tmp_path, monkeypatch, 3)
    for i in range(20):
        store.put("routes/r", {"uri": f"/{i}"})
        copy = tmp_path / f"copy{i}.jsonl"
        copy.write_bytes(path.read_bytes())
        again, _ = opened(copy)
        assert again.get("routes/r") is not None and again.get("routes/r").value["uri"] == f"/{i}"
        again.close()
    store.close()


def test_a_batch_is_one_line_applied_whole_or_not_at_all(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    store, heard = opened(path)
    store.replace([(f"routes/old{i}", {"uri": f"/o{i}"}) for i in range(3)], [])
    size = path.stat().st_size
    new = [(f"routes/new{i}", {"uri": f"/n{i}"}) for i in range(3)]
    store.replace(new, [f"routes/old{i}" for i in range(3)])
    assert [c.key for c in heard[-1][0]] == [
        *(f"routes/old{i}" for i in range(3)),
        *(f"routes/new{i}" for i in range(3)),
    ]
    # created indexes follow the order of the puts
    created = [store.get(k).created_index for k, _ in new]  # type: ignore[union-attr]
    assert created == sorted(created) and len(set(created)) == 3
    store.close()
    data = path.read_bytes()
    assert data[size:].count(b"\n") == 1
    path.write_bytes(data[: size + (len(data) - size) // 2])  # a crash tore the batch
    store, _ = opened(path)
    assert [e.key for e in store.items("routes/")] == [f"routes/old{i}" for i in range(3)]
    store.close()


def test_a_failed_write_leaves_file_and_memory_as_they_were(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.jsonl"
    store, _ = opened(path)
    store.put("routes/a", {"uri": "/a"})
    size = path.stat().st_size
    real_fsync = embedded_module.os.fsync

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(embedded_module.os, "fsync", full_disk)
    with pytest.raises(StoreError, match="No space left"):
        store.put("routes/b", {"uri": "/b"})
    monkeypatch.setattr(embedded_module.os, "fsync", real_fsync)
    assert path.stat().st_size == size and store.get("routes/b") is None
    store.put("routes/c", {"uri": "/c"})
    store.close()
    store, _ = opened(path)
    assert [e.key for e in store.items("routes/")] == ["routes/a", "routes/c"]
    store.close()


# -- kill -9 of a real node --------------------------------------------------------------------


def test_no_acknowledged_write_is_lost_to_kill_9(cli: Any, tmp_path: Path) -> None:
    store = tmp_path / "store.jsonl"
    port, admin_port = free_port(), free_port()
    args = (
        "--listen",
        f"127.0.0.1:{port}",
        "--admin-listen",
        f"127.0.0.1:{admin_port}",
        "--admin-key",
        KEY,
        "--store",
        str(store),
        "--workers",
        "1",
    )
    g = cli(*args, port=port)
    admin = Admin(f"http://127.0.0.1:{admin_port}").wait()
    acked: list[str] = []
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set() and i < 2000:
            body = {"uri": f"/w{i}", "plugins": {"mocking": {"response_example": f"w{i}"}}}
            try:
                r = admin.put(f"/routes/w{i}", body)
            except OSError:
                return
            if r.status == 201:
                acked.append(f"w{i}")
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    deadline = time.monotonic() + 10
    while len(acked) < 30 and time.monotonic() < deadline:
        time.sleep(0.01)
    g.proc.send_signal(signal.SIGKILL)
    g.proc.wait(10)
    stop.set()
    t.join(10)
    assert len(acked) >= 30, f"only {len(acked)} writes before the kill"

    g2 = cli(*args, port=port)
    admin.wait()
    listed = admin.get("/routes?page=1&page_size=500").json()
    stored = {item["value"]["id"] for item in listed["list"]}
    lost = [r for r in acked if r not in stored]
    assert not lost, f"acknowledged writes lost by kill -9: {lost}"
    last = acked[-1]
    r = request(g2.base, f"/{last}")
    assert r.status == 200 and r.body == last.encode()
    assert all(json.loads(line) for line in store.read_text().splitlines())

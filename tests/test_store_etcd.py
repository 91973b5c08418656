"""The etcd store against a real etcd (``/usr/bin/etcd``): load, watch, writes, resyncs,
outages, failover between members and the snapshot boot."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from etcd_server import Etcd, EtcdCluster
from origin import Blackhole, free_port
from pygateway.store.base import Change, Entry, StoreError, StoreUnavailable
from pygateway.store.encryption import APISIX_DEFAULT_KEYRING, FieldEncryption
from pygateway.store.etcd import EtcdStore

pytestmark = pytest.mark.skipif(not Path("/usr/bin/etcd").exists(), reason="etcd not installed")

SEEN_WITHIN = 1.0
"""A change made through etcd reaches another node's store within this many seconds."""


class Recorder:
    """A store listener that keeps the content the listener was told about."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[Change], bool]] = []
        self.content: dict[str, Entry] = {}
        self.lock = threading.Lock()

    def __call__(self, changes: Sequence[Change], full: bool) -> None:
        with self.lock:
            self.calls.append((list(changes), full))
            if full:
                self.content = {}
            for c in changes:
                if c.entry is None:
                    self.content.pop(c.key, None)
                else:
                    self.content[c.key] = c.entry

    def values(self) -> dict[str, dict[str, Any]]:
        with self.lock:
            return {k: e.value for k, e in self.content.items()}

    def fulls(self) -> int:
        with self.lock:
            return sum(1 for _, full in self.calls if full)


def wait_for(what: str, check: Callable[[], bool], timeout: float = 5) -> float:
    """Poll ``check`` until true; returns the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(0.01)
    raise AssertionError(f"{what}: not within {timeout}s")


@pytest.fixture(scope="module")
def shared() -> Iterator[EtcdCluster]:
    """One etcd for the tests that only write under their own prefix."""
    with EtcdCluster(1) as cluster:
        yield cluster


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    return f"/t-{request.node.name.replace('[', '-').rstrip(']')}"


@pytest.fixture
def own() -> Iterator[EtcdCluster]:
    """A single-member etcd of the test's own (it will be killed, wiped...)."""
    with EtcdCluster(1) as cluster:
        yield cluster


@pytest.fixture
def stores() -> Iterator[Callable[..., EtcdStore]]:
    """``stores(endpoints, prefix, listener=None, **kw)`` → a started store, closed after."""
    made: list[EtcdStore] = []

    def make(
        endpoints: Sequence[str],
        prefix: str = "/apisix",
        listener: Recorder | None = None,
        **kw: Any,
    ) -> EtcdStore:
        store = EtcdStore(endpoints, prefix, **kw)
        made.append(store)
        store.start(listener if listener is not None else Recorder())
        return store

    yield make
    for s in made:
        s.close()


def test_load_then_watch_sees_other_nodes_writes_within_a_second(
    shared: EtcdCluster, prefix: str, stores: Callable[..., EtcdStore]
) -> None:
    etcd = Etcd(shared.url)
    etcd.put(f"{prefix}/routes/1", {"uri": "/a"})
    etcd.put(f"{prefix}/upstreams/u", {"nodes": {"127.0.0.1:1": 1}})
    rec = Recorder()
    a = stores([shared.url], prefix, rec)
    assert rec.calls and rec.calls[0][1] is True, "start() did not deliver a full load first"
    assert rec.values() == {"routes/1": {"uri": "/a"}, "upstreams/u": {"nodes": {"127.0.0.1:1": 1}}}
    assert [e.key for e in a.items("routes/")] == ["routes/1"]

    b = stores([shared.url], prefix)
    b.put("routes/2", {"uri": "/b"})
    took = wait_for("a put by another node", lambda: "routes/2" in rec.values())
    assert took < SEEN_WITHIN
    entry = a.get("routes/2")
    assert entry is not None and entry.value == {"uri": "/b"}
    assert not rec.calls[-1][1], "a watched change was delivered as a full resync"

    etcd.delete(f"{prefix}/routes/1")  # a raw delete, as another APISIX node does it
    took = wait_for("a raw delete", lambda: "routes/1" not in rec.values())
    assert took < SEEN_WITHIN
    assert a.get("routes/1") is None
    assert [e.key for e in a.items("")] == ["routes/2", "upstreams/u"]
    assert rec.fulls() == 1


def test_put_reports_created_or_replaced_with_etcd_indexes(
    shared: EtcdCluster, prefix: str, stores: Callable[..., EtcdStore]
) -> None:
    store = stores([shared.url], prefix)
    first, created = store.put("routes/r", {"uri": "/x"})
    assert created is True
    assert first.created_index == first.modified_index > 0
    assert store.get("routes/r") == first, "an acknowledged put is not readable at once"

    second, created = store.put("routes/r", {"uri": "/y"})
    assert created is False
    assert second.created_index == first.created_index
    assert second.modified_index > first.modified_index
    assert store.items("routes/") == [second]

    assert Etcd(shared.url).get(f"{prefix}/routes/r") == {"uri": "/y"}
    gone = store.delete("routes/r")
    assert gone is not None and gone.value == {"uri": "/y"}
    assert gone.modified_index == second.modified_index
    assert store.get("routes/r") is None, "a delete is not visible at once"
    assert store.delete("routes/r") is None
    assert store.items("routes/") == []
    wait_for("the watch catches up", lambda: store.revision > second.modified_index)
    assert store.get("routes/r") is None


def test_a_put_with_a_ttl_is_on_an_etcd_lease(
    shared: EtcdCluster, prefix: str, stores: Callable[..., EtcdStore]
) -> None:
    store = stores([shared.url], prefix)
    store.put("routes/temp", {"uri": "/t"}, ttl=1)
    store.put("routes/kept", {"uri": "/k"}, ttl=1)
    store.put("routes/kept", {"uri": "/k2"})  # a put without a lease detaches it
    assert store.get("routes/temp") is not None
    # etcd may round a lease up to its shortest (about 2 s with the default election timeout)
    wait_for("the lease expires", lambda: store.get("routes/temp") is None, timeout=10)
    assert Etcd(shared.url).get(f"{prefix}/routes/temp") is None
    assert store.get("routes/kept") is not None


def test_watched_entries_carry_create_and_mod_revisions(
    shared: EtcdCluster, prefix: str, stores: Callable[..., EtcdStore]
) -> None:
    etcd = Etcd(shared.url)
    rec = Recorder()
    stores([shared.url], prefix, rec)
    created = etcd.put(f"{prefix}/services/s", {"name": "one"})
    modified = etcd.put(f"{prefix}/services/s", {"name": "two"})
    wait_for("the update", lambda: rec.values().get("services/s") == {"name": "two"})
    entry = rec.content["services/s"]
    assert (entry.created_index, entry.modified_index) == (created, modified)


def test_new_id_is_apisix_20_digit_revision(
    shared: EtcdCluster, prefix: str, stores: Callable[..., EtcdStore]
) -> None:
    store = stores([shared.url], prefix)
    ids = [store.new_id() for _ in range(3)]
    for i in ids:
        assert len(i) == 20 and i.isdigit() and i.startswith("0000"), i
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert int(ids[-1]) <= Etcd(shared.url).revision()
    assert store.get("gen_id") is None, "the id generator key leaked into the config"


def test_reads_an_apisix_cluster_layout_and_skips_bookkeeping(
    shared: EtcdCluster, stores: Callable[..., EtcdStore], caplog: pytest.LogCaptureFixture
) -> None:
    etcd = Etcd(shared.url)
    p = "/apisix-layout"
    etcd.put(f"{p}/routes", "init_dir")  # APISIX 2.x directory markers
    etcd.put(f"{p}/upstreams", "init_dir")
    etcd.put(f"{p}/gen_id", "17")
    etcd.put(f"{p}/plugins", [{"name": "limit-count"}])
    etcd.put(f"{p}/routes/00000000000000000012", {"uri": "/hello", "upstream_id": "1"})
    etcd.put(f"{p}/upstreams/1", {"type": "roundrobin", "nodes": {"127.0.0.1:1980": 1}})
    etcd.put(f"{p}/consumers/jack", {"username": "jack"})
    etcd.put(f"{p}/consumers/jack/credentials/a", {"plugins": {"key-auth": {"key": "k"}}})
    etcd.put(f"{p}/plugin_metadata/limit-count", {"id": "limit-count"})
    etcd.put(f"{p}/routes/garbage", "not json {")
    etcd.put(f"{p}/routes/list", [1, 2])
    etcd.put(f"{p}2/routes/1", {"uri": "/other-prefix"})  # a neighbour prefix
    etcd.put(f"{p}/data_plane/server_info/n1", {"id": "n1"})
    caplog.set_level(logging.DEBUG, logger="pygateway.store.etcd")

    rec = Recorder()
    store = stores([shared.url], p, rec)
    assert sorted(rec.values()) == [
        "consumers/jack",
        "consumers/jack/credentials/a",
        "data_plane/server_info/n1",
        "plugin_metadata/limit-count",
        "routes/00000000000000000012",
        "upstreams/1",
    ]
    assert [e.key for e in store.items("consumers/jack/")] == ["consumers/jack/credentials/a"]
    logged = caplog.text
    assert "routes/garbage" in logged and f"{p}/gen_id" in logged, "skipped keys not logged"

    # an object replaced by garbage keeps its last valid value (APISIX: "do not update the
    # config cache when the data is invalid"), and so does one nested too deeply to decode;
    # bookkeeping writes are not changes
    calls = len(rec.calls)
    caplog.clear()
    etcd.put(f"{p}/gen_id", "18")
    etcd.put(f"{p}/upstreams/1", "oops")
    etcd.put(f"{p}/upstreams/1", {"desc": "[" * 3000 + "]" * 3000})  # a string: valid
    etcd.put(f"{p}/routes/deep", "[" * 50000 + "]" * 50000)
    etcd.put(f"{p}/upstreams/2", {"nodes": {"127.0.0.1:1980": 1}})
    wait_for("the last write", lambda: "upstreams/2" in rec.values())
    assert rec.values()["upstreams/1"] == {"desc": "[" * 3000 + "]" * 3000}
    assert "routes/deep" not in rec.values()
    etcd.put(f"{p}/upstreams/1", "[" + "[" * 2000 + "]" * 2000 + "]")
    etcd.put(f"{p}/upstreams/3", {"nodes": {"127.0.0.1:1980": 1}})
    wait_for("the next write", lambda: "upstreams/3" in rec.values())
    assert rec.values()["upstreams/1"] == {"desc": "[" * 3000 + "]" * 3000}
    assert store.get("upstreams/1") is not None
    assert len(rec.calls) == calls + 3, "an invalid value was announced as a change"
    logged = caplog.text
    assert f"invalid item data of {p}/upstreams/1" in logged
    assert f"{p}/routes/deep" in logged and "nested deeper than" in logged


def test_compacted_watch_revision_forces_a_full_resync(
    shared: EtcdCluster, prefix: str, stores: Callable[..., EtcdStore]
) -> None:
    """A quiet prefix in a busy etcd: the watch times out, the revision it resumes from was
    compacted meanwhile, so the store must load everything again (and must not skip)."""
    etcd = Etcd(shared.url)
    etcd.put(f"{prefix}/routes/1", {"uri": "/1"})
    rec = Recorder()
    store = EtcdStore([shared.url], prefix)
    store.watch_timeout = 0.3
    try:
        store.start(rec)
        start_revision = store.revision
        for i in range(5):  # other tenants of the etcd move the revision on
            etcd.put(f"{prefix}-other/k", {"i": i})
        time.sleep(0.5)  # at least one watch timeout: the resume revision must not move
        assert store.revision == start_revision, "a watch timeout advanced the revision"
        etcd.compact()
        wait_for("a resync after compaction", lambda: rec.fulls() == 2, timeout=5)
        assert rec.values() == {"routes/1": {"uri": "/1"}}
        assert store.revision > start_revision
        etcd.put(f"{prefix}/routes/2", {"uri": "/2"})
        wait_for("watching again after the resync", lambda: "routes/2" in rec.values())
    finally:
        store.close()


def test_a_resync_keeps_the_last_valid_value_of_an_invalid_key(
    shared: EtcdCluster, prefix: str
) -> None:
    """A full reload (here after compaction) finds a key holding garbage: it keeps the
    value the store had, as APISIX's full load keeps the previous item."""
    etcd = Etcd(shared.url)
    etcd.put(f"{prefix}/upstreams/1", {"nodes": {"127.0.0.1:1980": 1}})
    rec = Recorder()
    store = EtcdStore([shared.url], prefix)
    store.watch_timeout = 0.3
    try:
        store.start(rec)
        etcd.put(f"{prefix}/upstreams/1", "not json")
        etcd.put(f"{prefix}/routes/1", {"uri": "/1"})
        wait_for("the valid write", lambda: "routes/1" in rec.values())
        for i in range(3):
            etcd.put(f"{prefix}-other/k", {"i": i})
        time.sleep(0.5)
        etcd.compact()
        wait_for("a resync after compaction", lambda: rec.fulls() == 2, timeout=5)
        assert rec.values() == {
            "upstreams/1": {"nodes": {"127.0.0.1:1980": 1}},
            "routes/1": {"uri": "/1"},
        }
    finally:
        store.close()


def test_wiped_etcd_is_reloaded_with_its_new_content(
    own: EtcdCluster, stores: Callable[..., EtcdStore]
) -> None:
    etcd = Etcd(own.url)
    for i in range(6):
        etcd.put(f"/apisix/routes/{i}", {"uri": f"/{i}"})
    rec = Recorder()
    store = stores([own.url], listener=rec)
    assert len(rec.values()) == 6
    old_revision = store.revision

    member = own.members[0]
    member.stop()
    member.wipe()
    own.start_member(member)
    etcd.put("/apisix/routes/new", {"uri": "/new"})  # a fresh etcd: revision 2

    wait_for("the wiped etcd's content", lambda: rec.values() == {"routes/new": {"uri": "/new"}})
    assert store.items("") == list(rec.content.values())
    assert store.revision < old_revision
    etcd.put("/apisix/routes/after", {"uri": "/after"})
    wait_for("the watch on the new etcd", lambda: "routes/after" in rec.values())


def test_wiped_etcd_rewritten_past_the_old_revision_is_still_reloaded(
    own: EtcdCluster, stores: Callable[..., EtcdStore]
) -> None:
    """Same cluster id, a higher revision than before: only a reload after the reconnect
    can tell; resuming the watch would miss the new etcd's first writes."""
    etcd = Etcd(own.url)
    etcd.put("/apisix/routes/old", {"uri": "/old"})
    rec = Recorder()
    store = stores([own.url], listener=rec)
    old_revision = store.revision
    member = own.members[0]
    member.stop()
    member.wipe()

    def rewrite(fresh: Etcd) -> None:
        for i in range(old_revision + 5):
            fresh.put(f"/apisix/routes/{i % 3}", {"uri": f"/{i}"})

    own.behind_the_clients_back(member, rewrite)
    own.start_member(member)
    keys = ["routes/0", "routes/1", "routes/2"]
    wait_for("the new content", lambda: sorted(rec.values()) == keys, timeout=10)
    assert rec.values() == {k: Etcd(own.url).get(f"/apisix/{k}") for k in keys}
    assert store.revision > old_revision
    assert store.get("routes/old") is None


def test_revision_going_backwards_on_the_watch_is_a_full_resync(
    own: EtcdCluster, stores: Callable[..., EtcdStore]
) -> None:
    etcd = Etcd(own.url)
    for i in range(10):
        etcd.put(f"/apisix/routes/{i}", {"uri": f"/{i}"})
    rec = Recorder()
    store = stores([own.url], listener=rec)
    member = own.members[0]
    member.kill()
    member.wipe()
    own.start_member(member)
    etcd.put("/apisix/routes/x", {"uri": "/x"})
    wait_for("the resync", lambda: rec.values() == {"routes/x": {"uri": "/x"}})
    assert rec.fulls() == 2, "a wiped etcd must be a full resync, not a diff"
    assert store.get("routes/1") is None


def test_etcd_down_cache_serves_writes_fail_fast_then_recover(
    own: EtcdCluster, stores: Callable[..., EtcdStore]
) -> None:
    etcd = Etcd(own.url)
    etcd.put("/apisix/routes/1", {"uri": "/1"})
    rec = Recorder()
    store = stores([own.url], listener=rec, timeout=2.0)
    member = own.members[0]
    member.kill()

    start = time.monotonic()
    for _ in range(100):
        assert store.get("routes/1") is not None
        assert len(store.items("routes/")) == 1
    assert time.monotonic() - start < 0.5, "reads waited on the network"

    for write in (
        lambda: store.put("routes/2", {"uri": "/2"}),
        lambda: store.delete("routes/1"),
        store.new_id,
    ):
        start = time.monotonic()
        with pytest.raises(StoreUnavailable, match=r"^etcd is unavailable: "):
            write()
        assert time.monotonic() - start < store.timeout + 0.5, "a write outlived the timeout"

    own.start_member(member)
    etcd.put("/apisix/routes/while-away", {"uri": "/w"})  # missed while reconnecting
    wait_for("recovery", lambda: "routes/while-away" in rec.values(), timeout=10)
    entry, created = store.put("routes/2", {"uri": "/2"})
    assert created and entry.value == {"uri": "/2"}
    wait_for("the watch after recovery", lambda: "routes/2" in rec.values())
    assert rec.values() == {
        "routes/1": {"uri": "/1"},
        "routes/while-away": {"uri": "/w"},
        "routes/2": {"uri": "/2"},
    }


def test_unreachable_at_start_without_snapshot_raises() -> None:

    store = EtcdStore([f"http://127.0.0.1:{free_port()}"], timeout=2.0)
    start = time.monotonic()
    with pytest.raises(StoreUnavailable, match=r"^etcd is unavailable: "):
        store.start(Recorder())
    assert time.monotonic() - start < 2.5
    store.close()


def test_snapshot_boot_when_etcd_is_down_then_resync(
    own: EtcdCluster, stores: Callable[..., EtcdStore], tmp_path: Path
) -> None:
    snapshot = tmp_path / "etcd-snapshot.json"
    etcd = Etcd(own.url)
    etcd.put("/apisix/routes/1", {"uri": "/1"})
    first = stores([own.url], snapshot=str(snapshot))
    first.put("routes/2", {"uri": "/2"})

    def saved() -> dict[str, Any]:
        try:
            doc = json.loads(snapshot.read_text())
        except (OSError, ValueError):
            return {}
        return {e["key"]: e["value"] for e in doc["entries"]}

    wait_for(
        "the snapshot", lambda: saved() == {"routes/1": {"uri": "/1"}, "routes/2": {"uri": "/2"}}
    )
    first.close()
    member = own.members[0]
    member.stop()

    rec = Recorder()
    store = stores([own.url], listener=rec, snapshot=str(snapshot), timeout=1.0)
    assert rec.calls[0][1] is True
    assert rec.values() == {"routes/1": {"uri": "/1"}, "routes/2": {"uri": "/2"}}
    assert store.get("routes/2") is not None
    with pytest.raises(StoreUnavailable):
        store.put("routes/3", {"uri": "/3"})

    own.start_member(member)
    etcd.delete("/apisix/routes/1")
    wait_for("the resync once etcd is back", lambda: rec.fulls() == 2, timeout=10)
    wait_for("the content of etcd", lambda: rec.values() == {"routes/2": {"uri": "/2"}})
    wait_for("the snapshot follows", lambda: saved() == {"routes/2": {"uri": "/2"}})


def test_secrets_are_encrypted_in_etcd_and_the_snapshot_plaintext_in_the_store(
    shared: EtcdCluster, prefix: str, stores: Callable[..., EtcdStore], tmp_path: Path
) -> None:
    fields = {("key-auth", "consumer"): ("key",)}
    encryption = FieldEncryption(APISIX_DEFAULT_KEYRING, lambda n, t: fields.get((n, t), ()))
    snapshot = tmp_path / "etcd-snapshot.json"
    store = stores([shared.url], prefix, snapshot=str(snapshot), encryption=encryption)
    jack = {"username": "jack", "plugins": {"key-auth": {"key": "jack-key"}}}
    store.put("consumers/jack", jack)
    secret = encryption.encrypt_text("jack-key")
    assert Etcd(shared.url).get(f"{prefix}/consumers/jack")["plugins"]["key-auth"]["key"] == secret

    def saved() -> Any:
        try:
            return json.loads(snapshot.read_text())["entries"][0]["value"]
        except (OSError, ValueError, IndexError):
            return None

    wait_for("the snapshot", lambda: saved() is not None)
    assert saved()["plugins"]["key-auth"]["key"] == secret, "a secret in clear in the snapshot"
    store.close()

    down = f"http://127.0.0.1:{free_port()}"  # etcd unreachable: the node boots from the file
    booted = stores([down], prefix, snapshot=str(snapshot), timeout=1.0, encryption=encryption)
    entry = booted.get("consumers/jack")
    assert entry is not None and entry.value == jack


def test_broken_snapshot_is_unavailable(tmp_path: Path) -> None:

    snapshot = tmp_path / "s.json"
    snapshot.write_text("{not json")
    store = EtcdStore([f"127.0.0.1:{free_port()}"], snapshot=str(snapshot), timeout=1.0)
    with pytest.raises(StoreUnavailable, match="no usable snapshot"):
        store.start(Recorder())
    store.close()


def test_three_members_one_down_reads_writes_and_watch_work(
    stores: Callable[..., EtcdStore],
) -> None:
    with EtcdCluster(3) as cluster:
        rec = Recorder()
        a = stores(cluster.endpoints, listener=rec)
        b = stores(list(reversed(cluster.endpoints)))
        b.put("routes/1", {"uri": "/1"})
        wait_for("a write before the failure", lambda: "routes/1" in rec.values())

        cluster.members[0].kill()  # the member both a's requests and a's watch use
        cluster.wait_healthy(cluster.members[1:], timeout=10)
        assert a.get("routes/1") is not None
        entry, created = a.put("routes/2", {"uri": "/2"})
        assert created and entry.value == {"uri": "/2"}
        b.put("routes/3", {"uri": "/3"})
        wait_for("the watch on another member", lambda: "routes/3" in rec.values(), timeout=5)
        assert a.endpoint != cluster.members[0].url
        assert len(a.new_id()) == 20
        assert rec.values() == {
            "routes/1": {"uri": "/1"},
            "routes/2": {"uri": "/2"},
            "routes/3": {"uri": "/3"},
        }


def test_reads_are_consistent_while_the_watch_updates(
    shared: EtcdCluster, prefix: str, stores: Callable[..., EtcdStore]
) -> None:
    rec = Recorder()
    store = stores([shared.url], prefix, rec)
    writer = stores([shared.url], prefix)
    errors: list[BaseException] = []
    done = threading.Event()

    def read() -> None:
        try:
            while not done.is_set():
                keys = [e.key for e in store.items("routes/")]
                assert keys == sorted(keys)
                store.get("routes/5")
        except BaseException as err:  # reported below
            errors.append(err)

    readers = [threading.Thread(target=read) for _ in range(2)]
    for t in readers:
        t.start()
    try:
        for i in range(30):
            writer.put(f"routes/{i % 10}", {"uri": f"/{i}"})
            if i % 3 == 0:
                writer.delete(f"routes/{(i + 5) % 10}")
    finally:
        done.set()
        for t in readers:
            t.join(timeout=5)
    assert not errors, errors
    wait_for("convergence", lambda: store.items("") == writer.items(""))
    assert rec.values() == {e.key: e.value for e in writer.items("")}


def test_close_stops_the_watch_promptly(shared: EtcdCluster, prefix: str) -> None:
    store = EtcdStore([shared.url], prefix)
    store.start(Recorder())
    start = time.monotonic()
    store.close()
    assert time.monotonic() - start < 1.0
    assert store._thread is not None and not store._thread.is_alive()


def test_refused_write_is_a_store_error(
    shared: EtcdCluster, prefix: str, stores: Callable[..., EtcdStore]
) -> None:
    store = stores([shared.url], prefix)
    with pytest.raises(StoreError) as err:
        store.put("routes/big", {"blob": "x" * (2 * 1024 * 1024)})  # over etcd's 1.5 MiB
    assert not isinstance(err.value, StoreUnavailable)
    assert "etcd refused the request" in str(err.value)


def test_a_hung_endpoint_does_not_eat_the_whole_timeout(
    shared: EtcdCluster, prefix: str, stores: Callable[..., EtcdStore], blackhole: Blackhole
) -> None:
    """The first endpoint accepts connections and never answers: the next one is used."""
    start = time.monotonic()
    rec = Recorder()
    store = stores([f"http://{blackhole.addr}", shared.url], prefix, rec, timeout=2.0)
    assert time.monotonic() - start < 2.0
    assert rec.calls[0][1] is True
    assert store.endpoint == shared.url
    start = time.monotonic()
    store.put("routes/1", {"uri": "/1"})
    assert time.monotonic() - start < 0.5, "the write went to the hung endpoint first"
    wait_for("the watch", lambda: "routes/1" in rec.values())

"""Deterministic release: A.release(), gm.scope(), gm.memory_info()."""
import gc

import pytest

import gpumat as gm


@pytest.fixture(autouse=True)
def _collect_first():
    gc.collect()        # garbage from earlier tests must not be freed in the middle of one


def in_use(backend):
    return gm.memory_info(backend)["bytes_in_use"]


def test_scope_returns_memory_to_baseline(backend):
    keep_outside = gm.ones(10, backend=backend)
    gc.collect()
    baseline = in_use(backend)
    with gm.scope() as s:
        temporaries = [gm.rand(100, 100, backend=backend) for _ in range(5)]
        total = temporaries[0] @ temporaries[1] + gm.exp(temporaries[2])
        kept = s.keep(gm.sum(total, axis=0))
        assert in_use(backend) >= baseline + 5 * 100 * 100 * 4
    assert all(t.released for t in temporaries) and total.released
    assert not kept.released and not keep_outside.released
    assert in_use(backend) == baseline + kept.nbytes
    kept.release()
    assert in_use(backend) == baseline


def test_scope_decorator_keeps_return_values(backend):
    baseline = in_use(backend)

    @gm.scope()
    def work(n):
        a = gm.rand(n, n, backend=backend)
        b = a * 2 + 1
        return b.sum(axis=1), {"max": b.max()}

    total, extra = work(64)
    assert not total.released and not extra["max"].released
    assert in_use(backend) == baseline + total.nbytes + extra["max"].nbytes
    del total, extra
    gc.collect()
    assert in_use(backend) == baseline


def test_nested_scopes(backend):
    baseline = in_use(backend)
    with gm.scope():
        with gm.scope():
            inner = gm.keep(gm.zeros(50, backend=backend))
            gone = gm.zeros(50, backend=backend)
        assert gone.released and not inner.released
    assert inner.released
    assert in_use(backend) == baseline


def test_release_and_use_after_release(backend):
    baseline = in_use(backend)
    a = gm.zeros(1000, backend=backend)
    assert in_use(backend) == baseline + 4000
    a.release()
    a.release()            # idempotent
    assert in_use(backend) == baseline
    with pytest.raises(RuntimeError, match="released"):
        a + 1
    with pytest.raises(RuntimeError, match="released"):
        a.shape
    assert "released" in repr(a)


def test_shared_storage_is_freed_once(backend):
    baseline = in_use(backend)
    a = gm.zeros(10, 10, backend=backend)
    b = a.reshape(100)
    a.release()
    assert in_use(backend) == baseline + 400      # b still holds the storage
    assert b.sum().item() == 0
    b.release()
    assert in_use(backend) == baseline


def test_garbage_collection_frees(backend):
    baseline = in_use(backend)
    for _ in range(20):
        x = gm.rand(256, 256, backend=backend)
        y = x * x
    del x, y
    gc.collect()
    assert in_use(backend) == baseline

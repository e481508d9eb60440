"""The check for an op's short argument path (gm.xnor_conv2d, gm.xnor_gemm,
gm.batch_norm_forward): the path a layer's every call takes, which returns None for anything it
does not accept so that the op's full checks take it.  Both must give the same results, or the
same errors and messages, for every call."""


def _outcome(call, args, kwargs):
    """A call's results as (dtype, shape, bytes) per Array, or its exception and message."""
    try:
        result = call(*args, **kwargs)
    except Exception as exc:       # noqa: BLE001 -- the exception is the outcome compared
        return type(exc), str(exc)
    parts = result if isinstance(result, tuple) else (result,)
    return tuple((r.dtype, r.shape, r.gather().tobytes()) for r in parts)


def compare_paths(monkeypatch, module, name, call, calls):
    """Runs each (args, kwargs) of ``calls`` through ``call`` as it is, then again with
    ``module.<name>`` (the short path) refusing every call, and requires the same outcome.
    Returns (whether each call was refused with an exception, whether the short path took
    each call, the short path's function)."""
    quick = [_outcome(call, args, kwargs) for args, kwargs in calls]
    taken = []
    original = getattr(module, name)
    monkeypatch.setattr(module, name,
                        lambda *a: taken.append(original(*a) is not None) or None)
    full = [_outcome(call, args, kwargs) for args, kwargs in calls]
    monkeypatch.setattr(module, name, original)
    for (args, kwargs), q, f in zip(calls, quick, full):
        assert q == f, f"{kwargs}: short path {q[:1]} / full path {f[:1]}"
    refused = [isinstance(q[0], type) and issubclass(q[0], Exception) for q in quick]
    return refused, taken, original


def count_short_calls(monkeypatch, module, name, run):
    """Runs ``run()`` and returns, for each call of ``module.<name>`` it made, whether the
    short path took it."""
    taken = []
    original = getattr(module, name)
    monkeypatch.setattr(module, name,
                        lambda *a: taken.append(original(*a) is not None) or original(*a))
    run()
    monkeypatch.setattr(module, name, original)
    return taken

"""Deterministic memory release: ``gm.scope()`` (Sushi2's autodestruct) and ``gm.memory_info()``.

Every Array registers a weak reference with the innermost open scope.  When the scope closes,
each Array created inside it that is still alive and was not kept is released.  Kept arrays
(``scope.keep(A)``, ``gm.keep(A)``, or the return value of a function decorated with
``@gm.scope()``) move to the enclosing scope, so an outer scope can still free them.
State that a long-lived object creates lazily (an optimizer's moment buffers, a layer's
inference cache) is marked with ``outlive_scopes`` and never released by a scope: it lives
as long as its owner refers to it, whichever scope its first use ran in.
"""
import functools
import threading
import weakref

_state = threading.local()


def _stack():
    stack = getattr(_state, "stack", None)
    if stack is None:
        stack = _state.stack = []
    return stack


# id -> Array of the arrays no scope releases (weak: an entry goes with its array)
_OUTLIVING = weakref.WeakValueDictionary()


def outlive_scopes(*arrays):
    """Exempt ``arrays`` (lazily made state of a long-lived owner) from every scope's
    release; returns its argument(s)."""
    for a in _iter_arrays(arrays):
        _OUTLIVING[id(a)] = a
    return arrays[0] if len(arrays) == 1 else arrays


def register(array):
    """Called by Array on creation."""
    stack = _stack()
    if stack:
        stack[-1]._arrays.append(weakref.ref(array))


class scope:
    """Free every Array created inside that is not kept.

    ``with gm.scope() as s: ...; s.keep(result)`` or, as a decorator, ``@gm.scope()`` keeps
    whatever Arrays the function returns (inside tuples, lists and dicts too).
    """

    def __init__(self):
        self._arrays = []
        self._kept = set()

    def keep(self, *arrays):
        """Exclude ``arrays`` from release at exit; returns its argument(s)."""
        for a in _iter_arrays(arrays):
            self._kept.add(id(a))
        return arrays[0] if len(arrays) == 1 else arrays

    def __enter__(self):
        _stack().append(self)
        return self

    def __exit__(self, *exc):
        stack = _stack()
        assert stack and stack[-1] is self, "gm.scope exited out of order"
        stack.pop()
        parent = stack[-1] if stack else None
        for ref in self._arrays:
            a = ref()
            if a is None:
                continue
            if id(a) in self._kept:
                if parent is not None:
                    parent._arrays.append(ref)
            elif _OUTLIVING.get(id(a)) is not a:
                a.release()
        self._arrays.clear()
        self._kept.clear()
        return False

    def __call__(self, func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            with type(self)() as s:
                result = func(*args, **kwargs)
                s.keep(*_iter_arrays([result]))
                return result
        return wrapper


def keep(*arrays):
    """Keep ``arrays`` alive past the innermost open scope; returns its argument(s)."""
    stack = _stack()
    if stack:
        stack[-1].keep(*arrays)
    return arrays[0] if len(arrays) == 1 else arrays


def _iter_arrays(obj):
    from .array import Array
    if isinstance(obj, Array):
        yield obj
    elif isinstance(obj, (list, tuple, set)):
        for item in obj:
            yield from _iter_arrays(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _iter_arrays(item)


def memory_info(backend=None):
    """Bytes in use (held by live Arrays) and held (cached by a pool) per loaded backend.

    ``gm.memory_info()`` -> {'cpu': {'bytes_in_use': ..., 'bytes_held': ...}, ...};
    ``gm.memory_info('opencl')`` -> that backend's dict.
    """
    from .backends import get, loaded
    if backend is not None:
        return get(backend).memory_info()
    return {name: b.memory_info() for name, b in loaded().items()}

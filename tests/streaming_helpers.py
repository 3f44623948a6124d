"""What the streaming tests share: a file that lands in a watched folder later."""
from __future__ import annotations

import os
import threading
import time

__all__ = ['land_later']


def land_later(path, text: str, delay: float) -> threading.Thread:
    """After ``delay`` seconds, write ``text`` beside ``path`` and rename it in (as the
    docs ask a writer into a watched folder to do: the watch never sees it half written).
    Returns the thread (join it before reading what the stream wrote)."""
    def land():
        time.sleep(delay)
        partial = f'{path}.partial'
        with open(partial, 'w') as f:
            f.write(text)
        os.rename(partial, path)
    t = threading.Thread(target=land, daemon=True)
    t.start()
    return t

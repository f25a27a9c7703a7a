"""``build_index`` in which one rank is killed (SIGKILL) midway, for ``test_index_distributed.py``.

Run like the command under a launcher: ``python -m torch.distributed.run --nproc_per_node=2
tests/retriever/build_killed.py <build_index flags>``. The rank ``KILL_RANK`` kills itself when it is about to
write the record of its shard ``KILL_SHARD``: its earlier shards are complete and that shard's embeddings and
ids files are written, as a machine that goes down at that moment leaves them. The launcher then stops the
other ranks, wherever they are.
"""

from __future__ import annotations

import os
import signal
import sys


def main() -> int:
    from openmatch.retriever import index as index_module

    if int(os.environ["RANK"]) == int(os.environ["KILL_RANK"]):
        target = index_module.shard_names(int(os.environ["RANK"]), int(os.environ["KILL_SHARD"]))["meta"]
        real = index_module.write_json_atomic

        def write_json_atomic(path, obj):
            if os.path.basename(path) == target:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(path, obj)

        index_module.write_json_atomic = write_json_atomic
    from openmatch.driver import build_index

    return build_index.main()


if __name__ == "__main__":
    sys.exit(main())

"""``python -m prunelab.reproductions.chao RUNS.jsonl ... [--out DIR]``: the gRDA tables and figures
(the same as ``python -m prunelab.reproductions.chao.summarize``; the runs come from
``python -m prunelab.reproductions.chao.experiment``)."""

from prunelab.reproductions.chao.summarize import main

main()

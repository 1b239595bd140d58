"""Judging a run against traffic with known truth: `evaluate` replays the simulator's fresh
requests through a published run (contract precedence) and scores rephrase detection,
rewrites, patterns and labels; `dstc2` converts the DSTC2 spoken dialogues (real repeats
after system errors) into the log format."""

"""An evaluation run as a separate process (for the kill/resume and torchrun tests).

Usage: python tests/eval_job.py OUT [STATE_DIR]; writes OUT/results.json (rank 0).
"""
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from attack_helpers import dataset, trained_aux_model  # noqa: E402

from auxsurgery.evaluation import Budget, run_suite, write_report  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    out, state = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else None)
    x, y = dataset(40, seed=3, noise=0.3)
    result = run_suite(trained_aux_model(), (x, y), suite="adaptive,strong", eps=0.12, rules=("vote", "score"),
                       budget=Budget.quick(), batch_size=8, state_dir=state, progress=False)
    if int(os.environ.get("RANK", "0")) == 0:  # run_suite has left its process group by now
        write_report(result, out)


if __name__ == "__main__":
    main()

"""Build the wheelhouse of each job for SageMaker's prebuilt image (`make wheelhouse`).

Run it where PyPI (or the index pip is configured with) is reachable: on a workstation, in CI,
or in the build of whatever deploys the code location. The wheels land in ``.wheelhouse/<key>/``
(gitignored), where publishing a job's code finds them without any download; the first publish
of a code version uploads them once to ``code/wheels/<sha256>/``. A build that exists is reused.
"""

from __future__ import annotations

import sys

from resources.jobs import code as job_code
from resources.jobs.settings import JOB_NAMES


def main() -> int:
    try:
        for job in JOB_NAMES:
            house = job_code.prebuilt_image_wheelhouse(job)
            print(
                f"{job}: {house.directory} ({len(house.files)} wheels for Python "
                f"{job_code.IMAGE_TARGET.python_version}, published as code/wheels/{house.digest}/"
                f"): {', '.join(house.requirements)}"
            )
    except job_code.WheelhouseError as exc:
        print(f"build_wheelhouse: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

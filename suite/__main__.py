"""``python -m suite`` is the ``suite`` command (and what torchrun runs with ``-m suite``)."""

import os

from suite.cli import exit_now, main

if "TORCHELASTIC_RUN_ID" in os.environ:
    # Under torchrun, torch's own error recording: a rank's uncaught error is written to the
    # error file torchrun names, so torchrun's failure summary shows that rank's traceback.
    from torch.distributed.elastic.multiprocessing.errors import record

    main = record(main)

exit_now(main())

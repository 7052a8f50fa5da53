"""`python -m worker [celery worker options]`: a Celery worker for the TSLA_* settings."""

import sys

from tsla_service.permissions import owner_only_files
from tsla_service.settings import get_settings
from worker.app import create_app

owner_only_files()
create_app(get_settings()).worker_main(["worker", *sys.argv[1:]])

"""Uploads a file to vtx with tuspy, the tus project's Python client (installed by
deploy/local/setup.sh into .vtx/py). Used by tests/gateway.rs.

usage: upload.py ENDPOINT TOKEN FILE STORAGE [STOP_AT]

STORAGE is tuspy's URL store (a JSON file): a second run with the same STORAGE resumes the upload
(HEAD, then PATCH from the server's offset). STOP_AT stops after that many bytes, as a client
that was killed would. Prints the upload URL and the offset reached.
"""

import os
import sys

from tusclient import client
from tusclient.storage import filestorage

endpoint, token, path, storage = sys.argv[1:5]
stop_at = int(sys.argv[5]) if len(sys.argv) > 5 else None

tus = client.TusClient(endpoint, headers={"Authorization": "Bearer " + token})
uploader = tus.uploader(
    path,
    chunk_size=256 * 1024,
    # The video plays only from signed URLs (vtx reads this key; others are kept as sent).
    metadata={"filename": os.path.basename(path), "signed_playback": "true"},
    store_url=True,
    url_storage=filestorage.FileStorage(storage),
    upload_checksum=True,
)
uploader.upload(stop_at=stop_at)
print(uploader.url)
print(uploader.offset)

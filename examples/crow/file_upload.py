"""Port of Crow's ``examples/example_file_upload.cpp``: a multipart/form-data upload saved to disk.

    twistd -n crow --routes examples.crow.file_upload --listen tcp:18080:interface=127.0.0.1
    curl -F InputFile=@notes.txt -F comment=hi 127.0.0.1:18080/uploadfile

The part named ``InputFile`` is saved in ``upload_dir`` (``$CROWTWIST_UPLOAD_DIR``,
default ``uploads`` in the current directory, made if missing).  Crow's
example writes to the file name the client chose, as it is; that lets a
client write anywhere (``../../.bashrc``), so only the name's last component
is kept here, and names like ``..`` are refused with 400.  Parts past 1 MiB
go to temporary files while the body is parsed; ``part.save(path)`` moves
them rather than reading them into memory.
"""

from __future__ import annotations

import os
from pathlib import Path

from twisted.logger import Logger

from crowtwist import BadRequest, Crow, Request

log = Logger(namespace="examples.crow.file_upload")

upload_dir = Path(os.environ.get("CROWTWIST_UPLOAD_DIR", "uploads"))
"""Where uploaded files go."""

app = Crow()


@app.route("/uploadfile").methods("POST")               # .methods(crow::HTTPMethod::Post)
def upload(req: Request) -> int:
    file_message = req.multipart()                      # crow::multipart::message_view file_message(req);
    for part_name, part_value in file_message.part_map.items():
        log.debug("Part: {name}", name=part_name)
        if part_name == "InputFile":
            # Extract the file name (Content-Disposition's filename parameter)
            if part_value.filename is None:
                log.error('Part with name "InputFile" should have a file')
                raise BadRequest('the part "InputFile" has no filename')
            outfile_name = os.path.basename(part_value.filename.replace("\\", "/"))
            if outfile_name in ("", ".", ".."):
                raise BadRequest(f"unusable file name {part_value.filename!r}")
            for header_name, header_value in part_value.headers.items():
                log.debug("Header: {name}={value}", name=header_name, value=header_value)
            # Create a new file with the extracted file name and write the part's contents to it
            upload_dir.mkdir(parents=True, exist_ok=True)
            part_value.save(upload_dir / outfile_name)
            log.info(" Contents written to {path}", path=upload_dir / outfile_name)
        else:
            log.debug(" Value: {body!r}", body=part_value.body)
    return 200                                          # crow::response(200)


if __name__ == "__main__":
    app.port(18080).run()

"""The ``edge-calib`` command line."""

from __future__ import annotations

import errno
import os
import sys

import click

# OpenCV's FFmpeg and its own logger print a warning line per bad packet of a failing stream,
# drowning our one-line reports; only fatal FFmpeg messages and OpenCV errors get through
# (set these variables to see more).
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "8")
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

from . import __version__
from .core.errors import EdgeCalibError, ResourceExhausted

# what a missing import means, and how to get it (device installs leave out the workstation side)
MISSING = {
    "torch": "this command runs on the workstation and needs torch: pip install "
             "'edge-calib[train]' (with torch==2.13.0 for a CPU build)",
    "onnxsim": "exporting needs onnx-simplifier: pip install 'edge-calib[train]'",
    "scipy": "reading SVHN .mat files needs scipy: pip install 'edge-calib[train]'",
    "matplotlib": "plots need matplotlib: pip install 'edge-calib[train]'",
    "cv2": "no OpenCV is importable: pip install 'edge-calib[opencv]', or on a Jetson use "
           "JetPack's OpenCV (with GStreamer) from the system Python",
    "onnxruntime": "the onnxruntime backend needs onnxruntime: pip install onnxruntime "
                   "(on a Jetson, the onnxruntime-gpu wheel for your JetPack)",
}


# what the file system says about a place to write (full, read-only, no permission, a name too
# long): the user's to fix, so one line; writers are atomic, so the previous files stand
FILE_SYSTEM_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                      errno.ENAMETOOLONG, errno.ENOTDIR, errno.EEXIST}


class EdgeCalibGroup(click.Group):
    """Turns EdgeCalibError into one ``error:`` line and a non-zero exit status."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EdgeCalibError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except ResourceExhausted as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except ImportError as exc:
            module = (exc.name or "").split(".")[0]
            if module not in MISSING:
                raise
            command = ctx.invoked_subcommand or "edge-calib"
            click.echo(f"error: {command}: {MISSING[module]}", err=True)
            sys.exit(3)
        except OSError as exc:
            if exc.errno not in FILE_SYSTEM_ERRORS:
                raise
            command = ctx.invoked_subcommand or "edge-calib"
            name = str(exc.filename or "")
            name = name if len(name) <= 80 else name[:38] + "..." + name[-38:]
            what = exc.strerror
            if exc.errno in (errno.ENOTDIR, errno.EEXIST) and exc.filename \
                    and os.path.isfile(exc.filename):  # a folder to make is in the way
                what = "a file stands where a folder is needed"
            click.echo(f"error: {command}: {what}" + (f": {name}" if name else "")
                       + " (nothing was replaced)", err=True)
            sys.exit(1)
        except click.UsageError as exc:  # bad option values: one line, not the usage text
            command = exc.ctx.command_path if exc.ctx else "edge-calib"
            click.echo(f"error: {command}: {exc.format_message()}", err=True)
            sys.exit(2)


@click.group(cls=EdgeCalibGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edge-calib")
def main():
    """Light-weight data calibrators for frozen, compressed classifiers at the edge."""


def _register():
    from .commands import (
        adapt,
        bench,
        build_engine,
        compress,
        data,
        demo,
        doctor,
        export,
        runtime,
        training,
    )

    main.add_command(data.data)
    for cmd in (training.train_classifier, training.import_model, training.train,
                training.evaluate, training.adabn,
                compress.compress, export.export, adapt.adapt, build_engine.build_engine, runtime.run,
                bench.bench, doctor.doctor, demo.demo):
        main.add_command(cmd)


_register()

if __name__ == "__main__":
    main()

"""Per-session disk caps: each session's working directory is a filesystem
of its own, an ext4 image file of ``resources.disk_mb`` MiB that lives next to
the (empty) directory on the host, so writing past the cap gets ``ENOSPC`` in
the sandbox and the host never holds more than the image.

Two ways to mount the image, chosen by the backend (:func:`mechanism`):

``loop``
    root: the kernel's ext4 on a loop device (``LOOP_CONFIGURE`` with
    autoclear: the device goes when the instance's mount namespace does), with
    a journal.  Not mounted with ``discard``: on the kernels tried, data
    written right after a large delete read back as zeros after a remount
    (the loop device's hole punching raced the new writes), so space freed
    inside the image stays allocated on the host, up to the cap.
``fuse2fs``
    not root: ext4 needs a block device, which a user namespace may not mount,
    but FUSE may be mounted there; ``fuse2fs`` (e2fsprogs) serves the image
    from inside the instance's namespaces.  It is started before the
    instance drops its capabilities, keeps capabilities the handler lacks (so
    the handler cannot trace it or open its descriptors) and is asked to
    unmount, which flushes the image, when the instance ends in order.

Images are made by :func:`make_image` (the backend, off the event loop);
everything else runs in the instance, before user code.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import shutil
import signal
import stat
import struct
import subprocess
import time
from typing import Any

from . import isolation as iso

IMAGE_NAME = "disk.img"  # next to the session's ``work`` directory

LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LO_FLAGS_AUTOCLEAR = 4
_LOOP_CONFIG = struct.Struct("II232s64s")  # fd, block_size, struct loop_info64, reserved
_LO_FLAGS_OFFSET = 52  # of lo_flags in struct loop_info64

MKFS_CANDIDATES = ("mkfs.ext4", "/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4")
FUSE2FS_CANDIDATES = ("fuse2fs", "/usr/bin/fuse2fs", "/usr/sbin/fuse2fs", "/sbin/fuse2fs")
DEBUGFS_CANDIDATES = ("debugfs", "/usr/sbin/debugfs", "/sbin/debugfs")
E2FSCK_CANDIDATES = ("e2fsck", "/usr/sbin/e2fsck", "/sbin/e2fsck")

_EXT4_VALID_FS = 0x0001  # s_state: cleanly unmounted


def _which(candidates: tuple[str, ...]) -> str | None:
    for c in candidates:
        found = shutil.which(c) if not os.path.isabs(c) else (c if os.access(c, os.X_OK) else None)
        if found:
            return found
    return None


def mechanism(*, root: bool, userns: bool) -> tuple[str | None, str, dict[str, str]]:
    """(``"loop"`` | ``"fuse2fs"`` | None, why not, the tools' paths)."""
    mkfs = _which(MKFS_CANDIDATES)
    if mkfs is None:
        return None, "mkfs.ext4 (e2fsprogs) is not installed", {}
    tools = {"mkfs": mkfs}
    if root:
        if not os.access("/dev/loop-control", os.R_OK | os.W_OK):
            return None, "no /dev/loop-control: loop devices are unavailable", tools
        return "loop", "", tools
    if not userns:
        return None, "not root and no user namespace: nothing can be mounted", tools
    fuse2fs = _which(FUSE2FS_CANDIDATES)
    if fuse2fs is None:
        return None, "not root and fuse2fs is not installed (apt-get install fuse2fs)", tools
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return None, "not root and /dev/fuse is not usable", tools
    tools["fuse2fs"] = fuse2fs
    e2fsck = _which(E2FSCK_CANDIDATES)
    if e2fsck:
        tools["e2fsck"] = e2fsck
    return "fuse2fs", "", tools


def make_image(path: str, size_mb: int, mkfs: str, *, journal: bool) -> None:
    """A sparse file of ``size_mb`` MiB holding an empty ext4 filesystem whose
    root belongs to uid 0 (the instance gives it to the session's uid), with no
    blocks reserved for root: the cap is the cap.  Atomic: made under a
    temporary name, then renamed."""
    tmp = f"{path}.{os.getpid()}.{os.urandom(3).hex()}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.truncate(size_mb * 1024 * 1024)
        features = [] if journal else ["-O", "^has_journal"]
        subprocess.run(
            [mkfs, "-q", "-F", "-m", "0", *features, "-E", "root_owner=0:0,lazy_itable_init=1,lazy_journal_init=1,nodiscard", tmp],
            check=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"},
        )
        debugfs = _which(DEBUGFS_CANDIDATES)
        if debugfs:  # the session sees an empty directory (an rmdir at mount time costs milliseconds)
            subprocess.run([debugfs, "-w", "-R", "rmdir lost+found", tmp], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60, check=False,
                           env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"})
        os.chmod(tmp, 0o600)
        os.rename(tmp, path)
    except subprocess.CalledProcessError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise OSError(f"mkfs.ext4 failed: {exc.stdout.decode(errors='replace').strip()[-300:]}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


LOOP_GET_STATUS64 = 0x4C05


def _decode_dev(dev: int) -> tuple[int, int]:
    """The kernel's ``huge_encode_dev`` (what loop_info64.lo_device holds)."""
    return (dev & 0xFFF00) >> 8, (dev & 0xFF) | ((dev >> 12) & 0xFFF00)


def loop_devices_of(image: str) -> list[str]:
    """The loop devices still backed by ``image`` (root only: it opens them)."""
    st = os.stat(image)
    want = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    out: list[str] = []
    try:
        names = [n for n in os.listdir("/sys/block") if n.startswith("loop")]
    except OSError:
        return out
    for name in names:
        if not os.path.exists(f"/sys/block/{name}/loop/backing_file"):
            continue  # not attached
        try:
            fd = os.open(f"/dev/{name}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            info = bytearray(232)
            fcntl.ioctl(fd, LOOP_GET_STATUS64, info)
        except OSError:
            continue  # detached meanwhile
        finally:
            os.close(fd)
        dev, ino = struct.unpack_from("QQ", info, 0)
        if (*_decode_dev(dev), ino) == want:
            out.append(f"/dev/{name}")
    return out


def wait_released(image: str, timeout: float = 30.0) -> bool:
    """Wait until no loop device is backed by ``image`` any more.

    An instance that ended (in order or not) leaves its mount namespace to the
    kernel, which unmounts the ext4, flushing it, and then detaches the loop
    device (autoclear); mounting the image again before that would put two
    filesystems on one image.  True once released."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    while loop_devices_of(image):
        if time.monotonic() > deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    return True


def sparse_copy(src: str, dst: str) -> None:
    """Copy ``src`` to a new file ``dst``, its data extents only (a blank
    ext4 image of 1 GiB holds well under 1 MiB of data): a fresh image in
    well under a millisecond, instead of a mkfs run.  Atomic, as make_image."""
    tmp = f"{dst}.{os.getpid()}.{os.urandom(3).hex()}.tmp"
    fi = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fo = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            size = os.fstat(fi).st_size
            off = 0
            while off < size:
                try:
                    start = os.lseek(fi, off, os.SEEK_DATA)
                except OSError:  # ENXIO: no data after off
                    break
                end = os.lseek(fi, start, os.SEEK_HOLE)
                pos = start
                while pos < end:
                    n = os.copy_file_range(fi, fo, end - pos, pos, pos)
                    if n <= 0:
                        raise OSError(f"copy_file_range stopped at {pos} of {end}")
                    pos += n
                off = end
            os.ftruncate(fo, size)
        finally:
            os.close(fo)
        os.rename(tmp, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    finally:
        os.close(fi)


def is_clean(fd: int) -> bool:
    """Whether the ext4 image behind ``fd`` was cleanly unmounted."""
    sb = os.pread(fd, 64, 1024)
    return len(sb) == 64 and (struct.unpack_from("<H", sb, 58)[0] & _EXT4_VALID_FS) != 0


# --------------------------------------------------------------------------- in the instance

_daemon_pid: int | None = None


def attach_loop(image_fd: int) -> tuple[int, str]:
    """Attach ``image_fd`` to a free loop device with autoclear (it detaches
    when its last opener closes it, a mount included); returns an open
    descriptor on the device and its path."""
    libc = iso.libc()
    ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    try:
        for _ in range(64):  # another instance may take the same free device first
            n = fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
            dev = f"/dev/loop{n}"
            try:
                lfd = os.open(dev, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:  # the node appears a moment after the device
                time.sleep(0.001)
                continue
            info = bytearray(232)
            struct.pack_into("I", info, _LO_FLAGS_OFFSET, LO_FLAGS_AUTOCLEAR)
            cfg = ctypes.create_string_buffer(_LOOP_CONFIG.pack(image_fd, 0, bytes(info), b"\0" * 64))
            if libc.ioctl(lfd, LOOP_CONFIGURE, cfg) == 0:
                return lfd, dev
            err = ctypes.get_errno()
            os.close(lfd)
            if err != 16:  # EBUSY: taken meanwhile
                raise OSError(err, f"LOOP_CONFIGURE {dev}: {os.strerror(err)}")
        raise OSError(16, "no free loop device after 64 tries")
    finally:
        os.close(ctl)


def backed_by(loop_fd: int, st: os.stat_result) -> bool:
    """Whether the loop device open on ``loop_fd`` is backed by the file ``st``."""
    info = bytearray(232)
    try:
        fcntl.ioctl(loop_fd, LOOP_GET_STATUS64, info)
    except OSError:
        return False
    dev, ino = struct.unpack_from("QQ", info, 0)
    return (*_decode_dev(dev), ino) == (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)


def mount_ext4(dev: str, target: str) -> None:
    # noinit_itable: no background zeroing of inode tables after every mount
    iso.mount(dev, target, "ext4", iso.MS_NOSUID | iso.MS_NODEV, "errors=remount-ro,noinit_itable")


# the new mount API (Linux >= 5.2; the same numbers on every architecture)
SYS_MOVE_MOUNT = 429
SYS_FSOPEN = 430
SYS_FSCONFIG = 431
SYS_FSMOUNT = 432
_FSOPEN_CLOEXEC = 1
_FSCONFIG_SET_FLAG = 0
_FSCONFIG_SET_STRING = 1
_FSCONFIG_CMD_CREATE = 6
_FSMOUNT_CLOEXEC = 1
_MOUNT_ATTR_NOSUID = 0x2
_MOUNT_ATTR_NODEV = 0x4
_MOVE_MOUNT_F_EMPTY_PATH = 0x4


def _syscall_fd(nr: int, what: str, *args: Any) -> int:
    ret = int(iso.libc().syscall(nr, *args))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def premount_ext4(dev: str) -> int:
    """Mount the ext4 on ``dev`` detached (``fsmount``): the filesystem is up,
    its journal loaded, but it is attached nowhere.  Returns the mount's
    descriptor, which :func:`attach_premounted` attaches in an instance's
    mount namespace; closed unattached, the mount goes.  The same options as
    :func:`mount_ext4`."""
    fs = _syscall_fd(SYS_FSOPEN, "fsopen ext4", b"ext4", ctypes.c_uint(_FSOPEN_CLOEXEC))
    try:
        for kind, key, value in (
            (_FSCONFIG_SET_STRING, b"source", dev.encode()),
            (_FSCONFIG_SET_STRING, b"errors", b"remount-ro"),
            (_FSCONFIG_SET_FLAG, b"noinit_itable", None),
            (_FSCONFIG_CMD_CREATE, None, None),
        ):
            _syscall_fd(SYS_FSCONFIG, f"fsconfig {key!r} of {dev}", fs, ctypes.c_uint(kind), key, value, 0)
        return _syscall_fd(
            SYS_FSMOUNT, f"fsmount {dev}", fs, ctypes.c_uint(_FSMOUNT_CLOEXEC), ctypes.c_uint(_MOUNT_ATTR_NOSUID | _MOUNT_ATTR_NODEV)
        )
    finally:
        os.close(fs)


def attach_premounted(mount_fd: int, target: str) -> None:
    """Attach the detached mount ``mount_fd`` (:func:`premount_ext4`) on
    ``target``, in the caller's mount namespace."""
    _syscall_fd(
        SYS_MOVE_MOUNT, f"move_mount onto {target}", mount_fd, b"", iso.AT_FDCWD, target.encode(), ctypes.c_uint(_MOVE_MOUNT_F_EMPTY_PATH)
    )


def premounted_device(mount_fd: int) -> tuple[int, int]:
    """(major, minor) of the filesystem the mount ``mount_fd`` holds."""
    st = os.fstat(mount_fd)
    return os.major(st.st_dev), os.minor(st.st_dev)


def mount_loop(image_fd: int, target: str) -> str:
    """Attach ``image_fd`` to a free loop device and mount its ext4 on
    ``target``; returns the device's path."""
    lfd, dev = attach_loop(image_fd)
    try:
        mount_ext4(dev, target)
    finally:
        os.close(lfd)
    return dev


def mount_fuse2fs(image_fd: int, target: str, fuse2fs: str, e2fsck: str | None) -> int:
    """Serve the image with fuse2fs on ``target``; returns the daemon's pid."""
    global _daemon_pid
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
    img = f"/proc/self/fd/{image_fd}"
    if e2fsck and not is_clean(image_fd):  # an instance that was killed: repair first
        subprocess.run([e2fsck, "-p", img], pass_fds=(image_fd,), stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, timeout=300, check=False)
    # fuse2fs daemonises once the mount is made; the daemon is then our child
    # (we are PID 1 of this PID namespace), found by its name and parent
    proc = subprocess.run(
        [fuse2fs, img, target, "-o", "nosuid,nodev"],
        pass_fds=(image_fd,), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env=env, timeout=60, check=False,
    )
    if proc.returncode != 0 or not os.path.ismount(target):
        raise OSError(f"fuse2fs failed ({proc.returncode}): {proc.stdout.decode(errors='replace').strip()[-300:]}")
    _daemon_pid = _find_daemon(fuse2fs)
    return _daemon_pid or 0


def _find_daemon(exe: str) -> int | None:
    name = os.path.basename(exe)[:15]
    me = os.getpid()
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1: stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        if comm == name and ppid == me:
            return int(d)
    return None


def stop_daemon(timeout: float = 5.0) -> None:
    """Ask fuse2fs to unmount and flush the image, and wait for it (it is our
    child); an instance ending in order calls this before it exits."""
    global _daemon_pid
    pid, _daemon_pid = _daemon_pid, None
    if not pid:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done:
            return
        time.sleep(0.005)


# -- the host's way into a session's directory ------------------------------------


def open_in_session(workdir: str, instance: dict[str, Any] | None, rel: str, *, directory: bool = False) -> int:
    """An ``O_PATH`` descriptor of ``rel`` in a session's working directory,
    as its instance sees it.

    With a disk cap the directory is an image mounted in the instance's mount
    namespace only (the host's directory is an empty mount point), so it is
    reached through ``/proc/<pid>/root``; without one, or with no live
    instance, it is the directory itself.  Whatever lies below is the
    sandbox's to change, so no symlink is followed there (an absolute one
    would resolve on the host) and ``..`` is refused.  ``instance`` is the
    ``instance`` part of the session's description.  Raises ``OSError``.
    """
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise OSError(18, f"{rel!r} leaves the session's directory")
    base = workdir
    if instance and instance.get("alive", True) and (instance.get("isolation") or {}).get("disk"):
        pid = instance.get("pid")
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
            raise OSError(3, "the session's instance has no process to reach its disk through")
        # the host's own path (its symlinks are the host's), walked in the
        # instance's mount namespace without following any
        base = f"/proc/{pid}/root"
        parts = [p for p in os.path.realpath(workdir).split("/") if p] + parts
    fd = os.open(base, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            flags = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_DIRECTORY if (directory or not last) else 0)
            nxt = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = nxt
        if stat.S_ISLNK(os.fstat(fd).st_mode):
            raise OSError(40, f"{rel!r} is a symbolic link")
        return fd
    except BaseException:
        os.close(fd)
        raise

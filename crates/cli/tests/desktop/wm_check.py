# Prints the name of the window manager that manages the screen of
# $DISPLAY, as EWMH says: the window named by the root window's
# _NET_SUPPORTING_WM_CHECK property, and that window's _NET_WM_NAME; prints
# "none" when no window manager has said so. Talks to the X server through
# libX11 (ctypes), which the desktop image has.
import ctypes
import sys

x = ctypes.CDLL("libX11.so.6")
x.XOpenDisplay.restype = ctypes.c_void_p
x.XOpenDisplay.argtypes = [ctypes.c_char_p]
x.XDefaultRootWindow.restype = ctypes.c_ulong
x.XDefaultRootWindow.argtypes = [ctypes.c_void_p]
x.XInternAtom.restype = ctypes.c_ulong
x.XInternAtom.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
x.XGetWindowProperty.argtypes = [
    ctypes.c_void_p,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_long,
    ctypes.c_long,
    ctypes.c_int,
    ctypes.c_ulong,
    ctypes.POINTER(ctypes.c_ulong),
    ctypes.POINTER(ctypes.c_int),
    ctypes.POINTER(ctypes.c_ulong),
    ctypes.POINTER(ctypes.c_ulong),
    ctypes.POINTER(ctypes.c_void_p),
]
x.XFree.argtypes = [ctypes.c_void_p]

display = x.XOpenDisplay(None)
if not display:
    sys.exit("cannot open the display")


def prop(window, name):
    """The property's items: (format, count, bytes), or None when unset."""
    atom = x.XInternAtom(display, name, 0)
    kind, fmt = ctypes.c_ulong(), ctypes.c_int()
    count, after, data = ctypes.c_ulong(), ctypes.c_ulong(), ctypes.c_void_p()
    x.XGetWindowProperty(
        display, window, atom, 0, 1024, 0, 0,
        ctypes.byref(kind), ctypes.byref(fmt), ctypes.byref(count),
        ctypes.byref(after), ctypes.byref(data),
    )
    if not data.value or count.value == 0:
        return None
    # Format 32 items are C longs in Xlib's memory.
    size = {8: 1, 16: ctypes.sizeof(ctypes.c_short), 32: ctypes.sizeof(ctypes.c_long)}
    raw = ctypes.string_at(data.value, count.value * size[fmt.value])
    x.XFree(data)
    return fmt.value, count.value, raw


check = prop(x.XDefaultRootWindow(display), b"_NET_SUPPORTING_WM_CHECK")
if check is None:
    print("none")
    sys.exit(0)
window = ctypes.c_ulong.from_buffer_copy(check[2][: ctypes.sizeof(ctypes.c_ulong)]).value
name = prop(window, b"_NET_WM_NAME")
print(name[2].decode("utf-8", "replace") if name else "unnamed")

# A small Tk program for the desktop tests: a button, a canvas and an entry
# that write every event they get to a file, one JSON object a line, with
# root (screen) coordinates and the X server's time of the event in
# milliseconds ("t"); and the widgets' places on the screen ("layout" lines,
# again whenever the window moves).
import json
import sys
import tkinter as tk

log = open(sys.argv[1], "w", buffering=1)


def write(**fields):
    log.write(json.dumps(fields) + "\n")


root = tk.Tk()
root.title("nook-tk-events")
root.geometry("+40+40")
button = tk.Button(root, text="Press me", width=20, height=2)
button.pack(padx=10, pady=10)
canvas = tk.Canvas(root, width=320, height=160, bg="white")
canvas.pack(padx=10, pady=10)
entry = tk.Entry(root, width=30)
entry.pack(padx=10, pady=10)


def pointer(widget, kind):
    return lambda e: write(
        widget=widget,
        event=kind,
        num=e.num,
        x=e.x_root,
        y=e.y_root,
        state=e.state,
        t=e.time,
    )


for name, w in (("button", button), ("canvas", canvas), ("entry", entry)):
    w.bind("<ButtonPress>", pointer(name, "press"))
    w.bind("<ButtonRelease>", pointer(name, "release"))
button.bind("<Double-Button-1>", pointer("button", "double"))
# On the canvas, away from the button's clicks: Tk counts presses of one
# button within 500 ms and 5 pixels as one double or triple click.
canvas.bind("<Triple-Button-1>", pointer("canvas", "triple"))
canvas.bind("<B1-Motion>", pointer("canvas", "motion"))
# Entry's class bindings (focus, insert) still run after these.
entry.bind(
    "<KeyPress>",
    lambda e: write(
        widget="entry", event="key", keysym=e.keysym, char=e.char, state=e.state, t=e.time
    ),
)


def key_release(e):
    write(widget="entry", event="keyup", keysym=e.keysym, state=e.state, t=e.time)
    write(widget="entry", event="text", text=entry.get())


entry.bind("<KeyRelease>", key_release)


def layout(_event=None):
    root.update_idletasks()
    for name, w in (("button", button), ("canvas", canvas), ("entry", entry)):
        write(
            layout=name,
            x=w.winfo_rootx(),
            y=w.winfo_rooty(),
            w=w.winfo_width(),
            h=w.winfo_height(),
        )


root.bind("<Configure>", lambda e: layout() if e.widget is root else None)
root.after(300, layout)
root.mainloop()

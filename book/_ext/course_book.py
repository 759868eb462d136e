"""The book's own Sphinx extension: what Jupyter Book 1 and its theme get wrong for an offline reader.

- Each page declared Thebe's settings twice (``const THEBE_JS_URL`` twice is a script error in every
  browser): every script is now included once per page.
- The colour mode defaulted to ``""``, which the theme's script rejects with a console error on a
  reader's first visit: it defaults to ``auto`` (the reader's system setting).
- Long URLs and identifiers in prose pushed a phone's page sideways: ``book/_static/course_book.css``
  lets them wrap.
- Launch buttons (Binder, Colab) need the repository the book is published from. ``_config.yml``
  names the services; they are switched on by one setting, ``repository.url``, and stay off (rather
  than failing the build) while it is empty.
"""

from __future__ import annotations

from pathlib import Path

STATIC = Path(__file__).resolve().parent.parent / "_static"

LAUNCH_SERVICES = ("binderhub_url", "colab_url", "jupyterhub_url", "deepnote_url", "jupyterlite_url")


def _configure(app, config) -> None:
    config.html_static_path = [*config.html_static_path, str(STATIC)]
    config.html_context.setdefault("default_mode", "auto")  # the theme reads it from the page's context
    options = config.html_theme_options
    if not options.get("repository_url"):
        launch = dict(options.get("launch_buttons") or {})
        for service in LAUNCH_SERVICES:
            launch.pop(service, None)
        options["launch_buttons"] = launch


def _scripts_once(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for script in scripts:
        # An inline script comes as filename None from one extension and "" from another: the same script.
        key = (getattr(script, "filename", script) or "", repr(sorted(getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    scripts[:] = unique


def setup(app):
    app.connect("config-inited", _configure, priority=900)
    app.add_css_file("course_book.css")
    app.connect("html-page-context", _scripts_once, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

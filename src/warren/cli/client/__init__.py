"""Client commands of the ``warren`` CLI: login, sandboxes, files, snapshots, hosts, API keys.

One module per command group (``login``, ``sandbox``, ``files``, ``snapshot``, ``host``,
``key``), each registered in ``warren.cli.main.COMMANDS``; what they share is written once:
``connection`` (how a command reaches the control plane) and ``output`` (tables, ``--json``,
errors).

Everything goes through the public REST API (sandbox work through the Python SDK, and only its
public names), with the URL and credentials from the options, ``WARREN_URL`` /
``WARREN_API_KEY`` / ``WARREN_ACCESS_TOKEN``, or the file written by ``warren login``. Every
listing takes ``--json`` for scripts; errors are one line on stderr and exit code 1;
``sandbox exec`` exits with the command's own exit code.
"""

"""``fastbp info``: version, backends, BLAS kernels and threads, MPI, the environment."""

from __future__ import annotations

import json

from fastbp._version import __version__


def add_info_command(commands):
    """Register ``fastbp info`` on the ``commands`` sub-parsers."""
    info = commands.add_parser("info", help="version, backends, BLAS kernels, threads, GPU")
    info.add_argument("--json", action="store_true", help="print the details as JSON")
    info.set_defaults(run=cmd_info)


def cmd_info(args):
    from fastbp.backends import backend_info
    from fastbp.distributed import mpi_info
    from fastbp.sysinfo import machine_info

    backends = backend_info()  # creates the available backends, loading their BLAS
    machine = machine_info()
    mpi = mpi_info()
    if args.json:
        print(json.dumps({"version": __version__, "backends": backends, **machine, "mpi": mpi},
                         indent=2, default=str))
        return 0
    cpu = machine["cpu"]
    print(f"fastbp {__version__}  (python {machine['packages']['python']}, "
          f"numpy {machine['packages']['numpy']})")
    generation = (f" (family {cpu['family']}, model {cpu['model_number']})"
                  if cpu["family"] is not None else "")
    print(f"cpu: {cpu['model']}{generation}, {cpu['cores']} cores, {cpu['simd']}")
    print("backends:")
    for name, entry in backends.items():
        if entry["available"]:
            details = ", ".join(f"{k} {v}" for k, v in entry.items() if k != "available")
            print(f"  {name:6} available   {details}")
        else:
            print(f"  {name:6} unavailable {entry['reason']}")
    print("blas:")
    for lib in machine["blas"] or [{"filepath": "(none loaded)"}]:
        print(f"  {lib.get('filepath')}")
        if "version" in lib:
            print(f"    {lib['internal_api']} {lib['version']}, kernels {lib['architecture']}, "
                  f"{lib['num_threads']} threads ({lib['threading_layer']})")
        if "warning" in lib:
            print(f"    WARNING: {lib['warning']}")
    if mpi["available"]:
        print(f"mpi: mpi4py {mpi['mpi4py']}, {mpi['library']} (MPI {mpi['standard']})")
    else:
        print(f"mpi: unavailable ({mpi['reason']})")
    for key, value in machine["environment"].items():
        print(f"env: {key}={value}")
    return 0

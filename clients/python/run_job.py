"""Runs a command as a Baton job over gRPC and follows its output to the end.

    python3 run_job.py [--path SCRIPT] [COMMAND [ARGS...]]

COMMAND is an allow-listed program, run with ARGS (default: sh -c 'echo
hello from baton'); --path names a script in the workers' scripts directory
for it to run ("--path count.sh bash").

The connection is configured as the baton CLI's is, by the same variables:
BATON_CLIENT_SCHEDULER (default http://127.0.0.1:7080, the plain listener of
`baton dev`), and for https:// BATON_CLIENT_CA_FILE, BATON_CLIENT_CERT_FILE
and BATON_CLIENT_KEY_FILE (the mutual-TLS port, https://127.0.0.1:7070 under
`baton dev`), BATON_CLIENT_TOKEN for a listener that takes bearer tokens.

The exit status is 0 when the job succeeded, the job's own exit code when it
failed with one, and 1 otherwise (killed, stopped, timed out, or an error
from the scheduler).
"""

import argparse
import os
import sys

import grpc

# The generated packages (baton.v1, buf.validate) live in gen/ beside this
# file, where buf.gen.yaml writes them.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen"))

from baton.v1 import job_pb2  # noqa: E402
from baton.v1 import scheduler_service_pb2 as scheduler  # noqa: E402
from baton.v1 import scheduler_service_pb2_grpc as scheduler_grpc  # noqa: E402


def channel():
    """Returns a channel to the scheduler: h2c for http://, TLS for https://."""
    env = os.environ
    ca, cert, key = (env.get("BATON_CLIENT_" + n) for n in ("CA_FILE", "CERT_FILE", "KEY_FILE"))
    url = env.get("BATON_CLIENT_SCHEDULER", "http://127.0.0.1:7080")
    # As for the CLI, host:port means https when a CA or a client
    # certificate is configured, h2c otherwise.
    scheme, sep, target = url.partition("://")
    if not sep:
        scheme, target = ("https" if ca or cert else "http"), url
    target = target.rstrip("/")
    if scheme == "http":
        return grpc.insecure_channel(target)

    def read(path):
        if not path:
            return None
        with open(path, "rb") as f:
            return f.read()

    creds = grpc.ssl_channel_credentials(
        root_certificates=read(ca), private_key=read(key), certificate_chain=read(cert)
    )
    return grpc.secure_channel(target, creds)


def run(stub, metadata, command, path, args):
    """Starts the job, copies its output and returns the exit status."""
    started = stub.StartJob(
        scheduler.StartJobRequest(command=command, path=path, args=args),
        metadata=metadata,
    )
    job_id = started.job_id
    worker = started.jobs[0].worker_id if started.jobs else "a worker"
    print(f"job {job_id} started on {worker}", file=sys.stderr)

    # The job outlives this call: if the stream breaks, StreamJobOutput with
    # the same job id and the offset reached picks up where it stopped.
    final = None
    request = scheduler.StreamJobOutputRequest(job_id=job_id, follow=True)
    for res in stub.StreamJobOutput(request, metadata=metadata):
        event = res.WhichOneof("event")
        if event == "chunk":
            out = sys.stderr if res.chunk.stream == job_pb2.OUTPUT_STREAM_STDERR else sys.stdout
            out.buffer.write(res.chunk.data)
            out.flush()
        elif event == "status":
            final = res.status
    if final is None:
        raise RuntimeError(f"the output stream of job {job_id} ended without its final status")

    state = job_pb2.JobState.Name(final.state)
    print(f"job {job_id}: {state} ({final.reason})", file=sys.stderr)
    if final.state == job_pb2.JOB_STATE_SUCCEEDED:
        return 0
    if final.HasField("exit_code") and final.exit_code != 0:
        return final.exit_code
    return 1


def main(argv):
    parser = argparse.ArgumentParser(description="Run a command as a Baton job and follow its output.")
    parser.add_argument("--path", default="", help="a script in the workers' scripts directory")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="COMMAND [ARGS...]")
    opts = parser.parse_args(argv)
    if opts.command[:1] == ["--"]:
        opts.command = opts.command[1:]
    command, *args = opts.command or ["sh", "-c", "echo hello from baton"]

    metadata = []
    token = os.environ.get("BATON_CLIENT_TOKEN")
    if token:
        metadata.append(("authorization", f"Bearer {token}"))

    with channel() as ch:
        stub = scheduler_grpc.SchedulerServiceStub(ch)
        try:
            return run(stub, metadata, command, opts.path, args)
        except grpc.RpcError as err:
            print(f"baton: [{err.code().name.lower()}] {err.details()}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

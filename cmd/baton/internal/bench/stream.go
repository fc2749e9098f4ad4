package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// streamResult compares following a job's output to a file through the
// CLI with the same command piped to a file.
type streamResult struct {
	MiB int `json:"mib"`
	// Cluster is the local cluster the jobs ran on: "h2c" or "mTLS".
	Cluster string `json:"cluster"`
	// Command writes MiB MiB to stdout.
	Command string `json:"command"`
	// BatonSec are the times of `baton run -- COMMAND > file`, from the
	// CLI's start to its exit; PipeSec those of `sh -c 'COMMAND | cat >
	// file'`. The two alternate.
	BatonSec       []float64 `json:"baton_sec"`
	PipeSec        []float64 `json:"pipe_sec"`
	BatonMedianSec float64   `json:"baton_median_sec"`
	PipeMedianSec  float64   `json:"pipe_median_sec"`
	// Ratio is BatonMedianSec over PipeMedianSec.
	Ratio float64 `json:"ratio"`
	// CPUMsPerMiB is the CPU time used during the CLI runs per MiB:
	// "scheduler", each worker by name, and "cli" (the baton run process).
	CPUMsPerMiB map[string]float64 `json:"cpu_ms_per_mib"`
}

// streamCommand writes n bytes to stdout.
func streamCommand(n int64) []string {
	return []string{"head", "-c", strconv.FormatInt(n, 10), "/dev/zero"}
}

// runStream times `baton run` following a job that writes mib MiB into a
// file against the same command piped into a file, runs times each,
// alternating (and which goes first), after one untimed run of each.
func runStream(ctx context.Context, binary string, lc *localCluster, label string, mib, runs int) (*streamResult, error) {
	size := int64(mib) << 20
	command := streamCommand(size)
	out := filepath.Join(lc.dir, "stream.out")
	res := &streamResult{MiB: mib, Cluster: label, Command: strings.Join(command, " "), CPUMsPerMiB: map[string]float64{}}

	cpu := map[string]time.Duration{}
	viaBaton := func(timed bool) error {
		before, err := lc.cpu()
		if err != nil {
			return err
		}
		cmd := exec.Command(binary, append([]string{"run", "--config", lc.clientConfig, "--"}, command...)...)
		d, err := timeToFile(ctx, cmd, out, true, size)
		if err != nil {
			return fmt.Errorf("baton run: %w", err)
		}
		if !timed {
			return nil
		}
		after, err := lc.cpu()
		if err != nil {
			return err
		}
		for k, v := range after {
			if k != "client" {
				cpu[k] += v - before[k]
			}
		}
		cpu["cli"] += cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
		res.BatonSec = append(res.BatonSec, d.Seconds())
		return nil
	}
	viaPipe := func(timed bool) error {
		cmd := exec.Command("sh", append([]string{"-c", `out=$1; shift; "$@" | cat > "$out"`, "sh", out}, command...)...)
		d, err := timeToFile(ctx, cmd, out, false, size)
		if err != nil {
			return fmt.Errorf("pipe: %w", err)
		}
		if timed {
			res.PipeSec = append(res.PipeSec, d.Seconds())
		}
		return nil
	}
	if err := viaBaton(false); err != nil {
		return nil, err
	}
	if err := viaPipe(false); err != nil {
		return nil, err
	}
	for i := range runs {
		first, second := viaBaton, viaPipe
		if i%2 == 1 {
			first, second = viaPipe, viaBaton
		}
		if err := first(true); err != nil {
			return nil, err
		}
		if err := second(true); err != nil {
			return nil, err
		}
	}
	_ = os.Remove(out)
	res.BatonMedianSec, res.PipeMedianSec = median(res.BatonSec), median(res.PipeSec)
	if res.PipeMedianSec > 0 {
		res.Ratio = res.BatonMedianSec / res.PipeMedianSec
	}
	for k, v := range cpu {
		res.CPUMsPerMiB[k] = float64(v) / float64(time.Millisecond) / float64(mib*runs)
	}
	return res, nil
}

// timeToFile runs cmd and returns the time from its start to its exit,
// then checks that out holds size bytes. With redirect, cmd's standard
// output goes to out (created afresh), as `> out` would; otherwise cmd
// writes out itself. Ending ctx interrupts cmd as Ctrl-C would (the CLI
// then stops its job).
func timeToFile(ctx context.Context, cmd *exec.Cmd, out string, redirect bool, size int64) (time.Duration, error) {
	if redirect {
		f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			return 0, err
		}
		defer f.Close()
		cmd.Stdout = f
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.Env = benchEnv()
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	stop := context.AfterFunc(ctx, func() { _ = cmd.Process.Signal(os.Interrupt) })
	err := cmd.Wait()
	d := time.Since(start)
	stop()
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if err != nil {
		return 0, fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
	}
	info, err := os.Stat(out)
	if err != nil {
		return 0, err
	}
	if info.Size() != size {
		return 0, fmt.Errorf("the file holds %d bytes, want %d", info.Size(), size)
	}
	return d, nil
}

// median of xs (the mean of the middle two for an even count).
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(xs))
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// printStream writes the stream comparison as a table.
func printStream(w io.Writer, s *streamResult) {
	fmt.Fprintf(w, "%d MiB of output (%s) into a file, %s cluster, %d runs each, alternating\n\n", s.MiB, s.Command, s.Cluster, len(s.BatonSec))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "\tmedian s\tMiB/s\truns, s\t")
	row := func(name string, med float64, runs []float64) {
		parts := make([]string, len(runs))
		for i, r := range runs {
			parts[i] = strconv.FormatFloat(r, 'f', 3, 64)
		}
		rate := 0.0
		if med > 0 {
			rate = float64(s.MiB) / med
		}
		fmt.Fprintf(tw, "%s\t%.3f\t%.0f\t%s\t\n", name, med, rate, strings.Join(parts, " "))
	}
	row("baton run > file", s.BatonMedianSec, s.BatonSec)
	row("sh: cmd | cat > file", s.PipeMedianSec, s.PipeSec)
	_ = tw.Flush()
	fmt.Fprintf(w, "\nbaton/pipe: %.2fx\n", s.Ratio)
	keys := slices.Sorted(func(yield func(string) bool) {
		for k := range s.CPUMsPerMiB {
			if !yield(k) {
				return
			}
		}
	})
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %.2f", k, s.CPUMsPerMiB[k]))
	}
	fmt.Fprintf(w, "CPU per MiB during the baton runs, ms: %s\n", strings.Join(parts, ", "))
}

package jobrun

import (
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// otherBootID is a boot id that is not this boot's.
const otherBootID = "00000000-0000-4000-8000-000000000000"

// needBootID skips a test on a host without a boot id: there no record
// can prove its process alive.
func needBootID(t *testing.T) {
	t.Helper()
	switch bootID() {
	case "":
		t.Skip("this host has no /proc/sys/kernel/random/boot_id: no record can name a live process")
	case otherBootID:
		t.Fatalf("this boot's id is the test's other boot id %s", otherBootID)
	}
}

// oldFormatStart is a start record as workers before boot ids wrote it:
// job "old-format", sleep 1000, RUNNING as pid 4242 with start ticks
// 987654, created and started at unix 1,700,000,000.
const oldFormatStart = "0100000000000000000a6f6c642d666f726d6174018080d0e2c6bfce972f8080d0e2c6bfce972fa44286a43c010000000000000000000005736c65657000010431303030000000000000000000"

// TestRecordBootIDRoundTrip encodes records of this boot, of another boot
// and of an unknown one: each decodes with its boot, and a record without a
// boot id is written, and read, as workers before boot ids did.
func TestRecordBootIDRoundTrip(t *testing.T) {
	t.Parallel()
	needBootID(t)
	old, err := hex.DecodeString(oldFormatStart)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1_700_000_000, 0)
	oldRec := jobRecord{kind: kindStart, st: Status{
		ID: "old-format", Spec: Spec{Command: "sleep", Args: []string{"1000"}},
		State: StateRunning, PID: 4242, ExitCode: -1, CreatedAt: now, StartedAt: now,
	}, startTicks: 987654, otherBoot: bootUnknown}

	t.Run("old format loads", func(t *testing.T) {
		got, err := unmarshalRecord(string(old))
		if err != nil {
			t.Fatal(err)
		}
		if !sameRecord(got, oldRec) {
			t.Errorf("old record\n got %+v\nwant %+v", got, oldRec)
		}
		if again := oldRec.marshal(nil); string(again) != string(old) {
			t.Errorf("a record of an unknown boot encodes as\n%x\nnot as before boot ids\n%x", again, old)
		}
	})

	tests := []struct {
		name      string
		otherBoot string
		stored    string // the boot id in the payload, "" for none
	}{
		{"this boot", "", bootID()},
		{"another boot", otherBootID, otherBootID},
		{"unknown boot", bootUnknown, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, kind := range []recordKind{kindStart, kindEnd} {
				rec := fullRecord("boot-"+itoa(int64(kind)), kind)
				// Without tagged fields, which would follow the boot id.
				rec.st.Spec.ScriptName, rec.st.Spec.ScriptSize, rec.st.Spec.ScriptSHA256 = "", 0, ""
				rec.otherBoot = tc.otherBoot
				p := rec.marshal(nil)
				got, err := unmarshalRecord(string(p))
				if err != nil {
					t.Fatalf("kind %d: %v", kind, err)
				}
				if !sameRecord(got, rec) {
					t.Errorf("kind %d: round trip\n got %+v\nwant %+v", kind, got, rec)
				}
				bare := rec
				bare.otherBoot = bootUnknown
				if want := string(appendStringIf(bare.marshal(nil), tc.stored)); string(p) != want {
					t.Errorf("kind %d: payload ends in %q, want boot id %q", kind, p[len(bare.marshal(nil)):], tc.stored)
				}
			}
		})
	}

	t.Run("empty boot id is malformed", func(t *testing.T) {
		p := appendString(oldRec.marshal(nil), "")
		if _, err := unmarshalRecord(string(p)); !errors.Is(err, errBadRecord) {
			t.Errorf("a record with an empty boot id: %v, want errBadRecord", err)
		}
	})
}

func appendStringIf(b []byte, s string) []byte {
	if s == "" {
		return b
	}
	return appendString(b, s)
}

// TestRecordedProcessAlive asks about this test process under records that
// differ from it in one way each: only the exact one names it.
func TestRecordedProcessAlive(t *testing.T) {
	t.Parallel()
	needBootID(t)
	self := os.Getpid()
	ticks, err := procStartTicks(self)
	if err != nil {
		t.Fatal(err)
	}
	initTicks, initErr := procStartTicks(1)
	tests := []struct {
		name      string
		pid       int
		ticks     uint64
		otherBoot string
		want      bool
	}{
		{"this process", self, ticks, "", true},
		{"another boot", self, ticks, otherBootID, false},
		{"unknown boot", self, ticks, bootUnknown, false},
		{"reused pid", self, ticks + 1, "", false},
		{"no start time", self, 0, "", false},
		{"pid 1", 1, initTicks, "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.pid == 1 && initErr != nil {
				t.Skipf("cannot read pid 1's start time: %v", initErr)
			}
			rec := jobRecord{kind: kindStart, st: Status{ID: "x", State: StateRunning, PID: tc.pid}, startTicks: tc.ticks, otherBoot: tc.otherBoot}
			if got := recordedProcessAlive(&rec); got != tc.want {
				t.Errorf("recordedProcessAlive = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestLeftoverKillNeedsSameBoot starts a Runner, without cgroups, on a
// journal whose last record of a job is a start record naming a live
// process group with its pid: the job is reported LOST either way, and the
// group is killed only if the record is of this boot and has the process's
// start time. Otherwise the pid may since belong to someone else, as after
// a reboot, when pids and start times count from zero again.
func TestLeftoverKillNeedsSameBoot(t *testing.T) {
	t.Parallel()
	needBootID(t)
	tests := []struct {
		name      string
		otherBoot string
		ticksOff  uint64
		killed    bool
	}{
		{"same boot and start time", "", 0, true},
		{"another boot", otherBootID, 0, false},
		{"record before boot ids", bootUnknown, 0, false},
		{"reused pid", "", 1, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			leftover := exec.Command("sleep", "1000")
			leftover.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
			if err := leftover.Start(); err != nil {
				t.Fatal(err)
			}
			reaped := make(chan struct{})
			go func() {
				_ = leftover.Wait()
				close(reaped)
			}()
			t.Cleanup(func() {
				_ = leftover.Process.Kill()
				<-reaped
			})
			pid := leftover.Process.Pid
			ticks, err := procStartTicks(pid)
			if err != nil {
				t.Fatal(err)
			}
			now := time.Now()
			rec := jobRecord{kind: kindStart, st: Status{
				ID: "leftover", Spec: Spec{Command: "sleep", Args: []string{"1000"}},
				State: StateRunning, PID: pid, ExitCode: -1, CreatedAt: now, StartedAt: now,
			}, startTicks: ticks + tc.ticksOff, otherBoot: tc.otherBoot}
			data := t.TempDir()
			if err := os.WriteFile(filepath.Join(data, journalFile), appendFrame(nil, rec.marshal(nil)), 0o600); err != nil {
				t.Fatal(err)
			}

			r, _ := newRunner(t, func(o *Options) { o.DataDir, o.CgroupParent = data, "-" })
			st, err := r.Status("leftover")
			if err != nil || st.State != StateLost || st.Reason != "worker restarted" || st.PID != pid {
				t.Errorf("after restart: %v %q pid=%d, %v", st.State, st.Reason, st.PID, err)
			}
			// The Runner is up, so any kill of its own was sent: one from
			// here can end the process only if it did not.
			if !tc.killed {
				// Already reaped if the Runner killed it: the signal
				// check below says so.
				if err := leftover.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
					t.Fatal(err)
				}
			}
			select {
			case <-reaped:
			case <-time.After(testWait):
				t.Fatal("the leftover process did not end")
			}
			want := syscall.SIGTERM
			if tc.killed {
				want = syscall.SIGKILL
			}
			if got := leftover.ProcessState.Sys().(syscall.WaitStatus).Signal(); got != want {
				t.Errorf("the leftover process ended by %v, want %v", got, want)
			}
		})
	}
}

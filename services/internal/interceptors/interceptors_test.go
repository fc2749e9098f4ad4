package interceptors

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/emptypb"
)

func TestDeadlineClampsUnaryCalls(t *testing.T) {
	t.Parallel()
	const max = time.Minute
	tests := []struct {
		name   string
		client time.Duration // 0: no deadline
		want   time.Duration // the most the handler may get
	}{
		{"no deadline", 0, max},
		{"huge deadline", 1e10 * time.Millisecond, max},
		{"short deadline kept", 100 * time.Millisecond, 100 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()
			if tt.client > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tt.client)
				defer cancel()
			}
			var got time.Duration
			next := func(ctx context.Context, _ connect.AnyRequest) (connect.AnyResponse, error) {
				dl, ok := ctx.Deadline()
				if !ok {
					t.Fatal("the handler got no deadline")
				}
				got = time.Until(dl)
				return nil, nil
			}
			if _, err := NewDeadline(max).WrapUnary(next)(ctx, connect.NewRequest(&emptypb.Empty{})); err != nil {
				t.Fatal(err)
			}
			if got > tt.want {
				t.Errorf("handler deadline %v away, want at most %v", got, tt.want)
			}
		})
	}
}

func TestInternalHidesTheCauseAndLogsIt(t *testing.T) {
	t.Parallel()
	cause := errors.New("open /var/lib/secret/path: permission denied")
	err := Internal("internal error in the worker; see its log", cause)
	if strings.Contains(err.Message(), "/var/lib") {
		t.Errorf("the caller sees %q", err.Message())
	}
	if err.Code() != connect.CodeInternal {
		t.Errorf("code %v, want internal", err.Code())
	}
	var logs bytes.Buffer
	log := NewAccessLog(slog.New(slog.NewJSONHandler(&logs, nil)))
	next := func(context.Context, connect.AnyRequest) (connect.AnyResponse, error) { return nil, err }
	_, _ = log.WrapUnary(next)(t.Context(), connect.NewRequest(&emptypb.Empty{}))
	if !strings.Contains(logs.String(), "/var/lib/secret/path") || !strings.Contains(logs.String(), `"code":"internal"`) {
		t.Errorf("the access log lacks the cause or the code:\n%s", logs.String())
	}
}

// specRequest is a request of a given procedure.
type specRequest struct {
	*connect.Request[emptypb.Empty]
	spec connect.Spec
}

func (r specRequest) Spec() connect.Spec { return r.spec }

// TestAccessLogLevels: routine successes go to debug, failures never do,
// and internal errors reach a logger that shows only warnings and worse.
func TestAccessLogLevels(t *testing.T) {
	t.Parallel()
	heartbeat := connect.Spec{Procedure: "/baton.v1.SchedulerService/Heartbeat"}
	start := connect.Spec{Procedure: "/baton.v1.SchedulerService/StartJob"}
	tests := []struct {
		name    string
		level   slog.Level
		spec    connect.Spec
		err     error
		logged  bool
		wantLvl string
	}{
		{"a heartbeat at info", slog.LevelInfo, heartbeat, nil, false, ""},
		{"a heartbeat at debug", slog.LevelDebug, heartbeat, nil, true, "DEBUG"},
		{"a refused heartbeat", slog.LevelInfo, heartbeat, connect.NewError(connect.CodeNotFound, errors.New("register again")), true, "INFO"},
		{"a start", slog.LevelInfo, start, nil, true, "INFO"},
		{"an internal error at warn", slog.LevelWarn, start, Internal("x", errors.New("cause")), true, "ERROR"},
		{"a bad request at warn", slog.LevelWarn, start, connect.NewError(connect.CodeInvalidArgument, errors.New("bad")), false, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var logs bytes.Buffer
			log := NewAccessLog(slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: tc.level})))
			next := func(context.Context, connect.AnyRequest) (connect.AnyResponse, error) { return nil, tc.err }
			_, _ = log.WrapUnary(next)(t.Context(), specRequest{connect.NewRequest(&emptypb.Empty{}), tc.spec})
			if got := logs.Len() > 0; got != tc.logged {
				t.Fatalf("logged %v, want %v: %s", got, tc.logged, logs.String())
			}
			if tc.logged && !strings.Contains(logs.String(), `"level":"`+tc.wantLvl+`"`) {
				t.Errorf("want level %s: %s", tc.wantLvl, logs.String())
			}
		})
	}
}

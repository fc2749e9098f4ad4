package store

import (
	"cmp"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
)

// A schedule is one key; its fires kept are one more, a list: a fire
// records up to MaxMissRecords misses and trims the list to the history
// limit, which as keys of their own would take more operations than one
// etcd transaction allows.

type scheduleRec struct {
	ID        string `json:"id"`
	Owner     string `json:"owner"`
	Name      string `json:"name"`
	Def       []byte `json:"definition"`
	Paused    bool   `json:"paused,omitempty"`
	Created   int64  `json:"created"`
	Updated   int64  `json:"updated"`
	Cursor    int64  `json:"cursor"`
	LastFire  int64  `json:"last_fire,omitempty"`
	LastJob   string `json:"last_job,omitempty"`
	LastGroup string `json:"last_group,omitempty"`
	Fires     int64  `json:"fires,omitempty"`
	Misses    int64  `json:"misses,omitempty"`
	Skips     int64  `json:"skips,omitempty"`
}

type fireRec struct {
	Time    int64  `json:"time"`
	Manual  bool   `json:"manual,omitempty"`
	Outcome int32  `json:"outcome"`
	Job     string `json:"job,omitempty"`
	Group   string `json:"group,omitempty"`
	Reason  string `json:"reason,omitempty"`
}

func (e *Etcd) schedulesPrefix() string { return e.p + "schedules/" }
func (e *Etcd) scheduleKey(owner, name string) string {
	return e.schedulesPrefix() + sortStr(owner) + name
}
func (e *Etcd) scheduleIDKey(id string) string { return e.p + "schedule-ids/" + id }
func (e *Etcd) firesKey(id string) string      { return e.p + "fires/" + id }

func encodeSchedule(sc Schedule) ([]byte, error) {
	def, err := proto.Marshal(sc.Definition)
	if err != nil {
		return nil, err
	}
	return json.Marshal(scheduleRec{ID: sc.ID, Owner: sc.Owner, Name: sc.Name, Def: def, Paused: sc.Paused,
		Created: unixNano(sc.CreatedAt), Updated: unixNano(sc.UpdatedAt), Cursor: unixNano(sc.Cursor), LastFire: unixNano(sc.LastFire),
		LastJob: sc.LastJobID, LastGroup: sc.LastGroupID, Fires: sc.Fires, Misses: sc.Misses, Skips: sc.Skips})
}

func decodeSchedule(b []byte) (Schedule, error) {
	var r scheduleRec
	if err := json.Unmarshal(b, &r); err != nil {
		return Schedule{}, fmt.Errorf("decode schedule: %w", err)
	}
	sc := Schedule{ID: r.ID, Owner: r.Owner, Name: r.Name, Definition: &batonv1.Schedule{}, Paused: r.Paused,
		CreatedAt: fromUnixNano(r.Created), UpdatedAt: fromUnixNano(r.Updated), Cursor: fromUnixNano(r.Cursor), LastFire: fromUnixNano(r.LastFire),
		LastJobID: r.LastJob, LastGroupID: r.LastGroup, Fires: r.Fires, Misses: r.Misses, Skips: r.Skips}
	if err := proto.Unmarshal(r.Def, sc.Definition); err != nil {
		return Schedule{}, fmt.Errorf("schedule %s: decode definition: %w", sc.ID, err)
	}
	return sc, nil
}

// CreateSchedule implements [Schedules].
func (e *Etcd) CreateSchedule(ctx context.Context, sc Schedule, limit int) error {
	if sc.ID == "" || sc.Owner == "" || sc.Name == "" {
		return errors.New("create schedule: empty id, owner or name")
	}
	sc.LastFire, sc.LastJobID, sc.LastGroupID, sc.Fires, sc.Misses, sc.Skips = time.Time{}, "", "", 0, 0, 0
	b, err := encodeSchedule(sc)
	if err != nil {
		return fmt.Errorf("create schedule %s: %w", sc.Name, err)
	}
	err = e.update(ctx, func(tx *etx) error {
		if limit > 0 {
			prefix := e.schedulesPrefix() + sortStr(sc.Owner)
			n, err := tx.count(prefix, prefixEnd(prefix))
			if err != nil {
				return err
			}
			if n >= int64(limit) {
				return fmt.Errorf("%s has %d schedules: %w", sc.Owner, n, ErrLimit)
			}
		}
		for _, k := range []string{e.scheduleKey(sc.Owner, sc.Name), e.scheduleIDKey(sc.ID)} {
			if _, ok, err := tx.get(k); err != nil {
				return err
			} else if ok {
				return fmt.Errorf("schedule %q of %s: %w", sc.Name, sc.Owner, ErrConflict)
			}
		}
		tx.put(e.scheduleKey(sc.Owner, sc.Name), b)
		tx.put(e.scheduleIDKey(sc.ID), []byte(e.scheduleKey(sc.Owner, sc.Name)))
		return nil
	})
	if err != nil && !errors.Is(err, ErrLimit) && !errors.Is(err, ErrConflict) {
		return fmt.Errorf("create schedule %s: %w", sc.Name, err)
	}
	return err
}

// readSchedule reads the schedule at key, or fails with ErrNotFound.
func (e *Etcd) readSchedule(tx *etx, key, name string) (Schedule, error) {
	b, ok, err := tx.get(key)
	if err != nil {
		return Schedule{}, err
	}
	if !ok {
		return Schedule{}, fmt.Errorf("schedule %q: %w", name, ErrNotFound)
	}
	return decodeSchedule(b)
}

// changeSchedule reads the owner's schedule of that name in a
// transaction, lets change modify it, and writes it back.
func (e *Etcd) changeSchedule(ctx context.Context, owner, name string, change func(sc *Schedule)) (Schedule, error) {
	var out Schedule
	err := e.update(ctx, func(tx *etx) error {
		sc, err := e.readSchedule(tx, e.scheduleKey(owner, name), name)
		if err != nil {
			return err
		}
		change(&sc)
		b, err := encodeSchedule(sc)
		if err != nil {
			return err
		}
		tx.put(e.scheduleKey(owner, name), b)
		out = sc
		return nil
	})
	if err != nil {
		return Schedule{}, queueError("change schedule "+name, err)
	}
	return out, nil
}

// UpdateSchedule implements [Schedules].
func (e *Etcd) UpdateSchedule(ctx context.Context, owner, name string, def *batonv1.Schedule, now time.Time) (Schedule, error) {
	return e.changeSchedule(ctx, owner, name, redefine(def, now))
}

// PauseSchedule implements [Schedules].
func (e *Etcd) PauseSchedule(ctx context.Context, owner, name string, paused bool, now time.Time) (Schedule, error) {
	return e.changeSchedule(ctx, owner, name, pause(paused, now))
}

// GetSchedule implements [Schedules].
func (e *Etcd) GetSchedule(ctx context.Context, owner, name string) (Schedule, error) {
	var out Schedule
	err := e.view(ctx, func(tx *etx) error {
		var err error
		out, err = e.readSchedule(tx, e.scheduleKey(owner, name), name)
		return err
	})
	if err != nil && !errors.Is(err, ErrNotFound) {
		return Schedule{}, fmt.Errorf("get schedule: %w", err)
	}
	return out, err
}

// ListSchedules implements [Schedules]. Its page token is the (owner,
// name) of the last schedule of the previous page, as SQLite's is.
func (e *Etcd) ListSchedules(ctx context.Context, f ScheduleFilter) ([]Schedule, string, error) {
	size := f.PageSize
	if size <= 0 {
		size = DefaultPageSize
	}
	size = min(size, MaxPageSize)
	prefix := e.schedulesPrefix()
	if f.Owner != "" {
		prefix += sortStr(f.Owner)
	}
	start, end := prefix, prefixEnd(prefix)
	if f.PageToken != "" {
		b, err := base64.RawURLEncoding.DecodeString(f.PageToken)
		o, n, ok := strings.Cut(string(b), "\x00")
		if err != nil || !ok || (f.Owner != "" && o != f.Owner) {
			return nil, "", fmt.Errorf("page token %q: %w", truncate(f.PageToken), ErrInvalidPageToken)
		}
		start = max(start, e.scheduleKey(o, n)+"\x00")
	}
	var out []Schedule
	err := e.view(ctx, func(tx *etx) error {
		kvs, err := tx.scan(start, end, int64(size+1), false, false)
		if err != nil {
			return err
		}
		for _, kv := range kvs {
			sc, err := decodeSchedule(kv.value)
			if err != nil {
				return err
			}
			out = append(out, sc)
		}
		return nil
	})
	if err != nil {
		return nil, "", fmt.Errorf("list schedules: %w", err)
	}
	next := ""
	if len(out) > size {
		out = out[:size]
		last := out[size-1]
		next = base64.RawURLEncoding.EncodeToString([]byte(last.Owner + "\x00" + last.Name))
	}
	return out, next, nil
}

// AllSchedules implements [Schedules].
func (e *Etcd) AllSchedules(ctx context.Context) ([]Schedule, error) {
	var out []Schedule
	err := e.view(ctx, func(tx *etx) error {
		prefix := e.schedulesPrefix()
		kvs, err := tx.scan(prefix, prefixEnd(prefix), 0, false, false)
		if err != nil {
			return err
		}
		for _, kv := range kvs {
			sc, err := decodeSchedule(kv.value)
			if err != nil {
				return err
			}
			out = append(out, sc)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list schedules: %w", err)
	}
	return out, nil
}

// DeleteSchedule implements [Schedules].
func (e *Etcd) DeleteSchedule(ctx context.Context, owner, name string) (Schedule, error) {
	var out Schedule
	err := e.update(ctx, func(tx *etx) error {
		sc, err := e.readSchedule(tx, e.scheduleKey(owner, name), name)
		if err != nil {
			return err
		}
		out = sc
		tx.del(e.scheduleKey(owner, name))
		tx.del(e.scheduleIDKey(sc.ID))
		tx.del(e.firesKey(sc.ID))
		return nil
	})
	if err != nil {
		return Schedule{}, queueError("delete schedule "+name, err)
	}
	return out, nil
}

// readFires reads the fires kept of schedule id, newest first.
func (e *Etcd) readFires(tx *etx, id string) ([]fireRec, error) {
	b, ok, err := tx.get(e.firesKey(id))
	if err != nil || !ok {
		return nil, err
	}
	var fires []fireRec
	if err := json.Unmarshal(b, &fires); err != nil {
		return nil, fmt.Errorf("schedule %s: decode fires: %w", id, err)
	}
	return fires, nil
}

// RecordFire implements [Schedules].
func (e *Etcd) RecordFire(ctx context.Context, r FireRecord) (Schedule, error) {
	type prepared struct {
		j  Job
		st *batonv1.JobStatus
	}
	jobs := make([]prepared, 0, len(r.Jobs))
	for _, j := range r.Jobs {
		st := newJobStatus(&j)
		if (st.GetState() == batonv1.JobState_JOB_STATE_QUEUED) != (j.Queue != nil) {
			return Schedule{}, fmt.Errorf("record fire: job %s: a job has a place in the queue if and only if it is QUEUED", j.ID)
		}
		jobs = append(jobs, prepared{j, st})
	}
	f := r.Fire
	var out Schedule
	err := e.update(ctx, func(tx *etx) error {
		key, ok, err := tx.get(e.scheduleIDKey(r.ScheduleID))
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("schedule %s: %w", r.ScheduleID, ErrNotFound)
		}
		sc, err := e.readSchedule(tx, string(key), r.ScheduleID)
		if errors.Is(err, ErrNotFound) {
			return fmt.Errorf("schedule %s: %w", r.ScheduleID, ErrNotFound)
		}
		if err != nil {
			return err
		}
		if !f.Manual {
			switch {
			case sc.Paused:
				return fmt.Errorf("schedule %s is paused: %w", sc.Name, ErrConflict)
			case !f.Time.After(sc.Cursor):
				return fmt.Errorf("schedule %s: fire time %s is not after %s, the latest dealt with: %w", sc.Name, f.Time.Format(time.RFC3339Nano), sc.Cursor.Format(time.RFC3339Nano), ErrConflict)
			}
			sc.Cursor = f.Time
		}
		fires, err := e.readFires(tx, sc.ID)
		if err != nil {
			return err
		}
		add := func(fr fireRec) error {
			for _, old := range fires {
				if old.Time == fr.Time && old.Manual == fr.Manual {
					return fmt.Errorf("fire of schedule %s at %s is recorded already: %w", r.ScheduleID, fromUnixNano(fr.Time).Format(time.RFC3339Nano), ErrConflict)
				}
			}
			fires = append(fires, fr)
			return nil
		}
		missed := r.Missed
		if len(missed) > MaxMissRecords {
			missed = missed[len(missed)-MaxMissRecords:]
		}
		for _, t := range missed {
			if f.Outcome != batonv1.FireOutcome_FIRE_OUTCOME_UNSPECIFIED && !t.Before(f.Time) {
				return fmt.Errorf("schedule %s: missed time %s is not before the fire: %w", sc.Name, t, ErrConflict)
			}
			if err := add(fireRec{Time: unixNano(t), Outcome: int32(batonv1.FireOutcome_FIRE_OUTCOME_MISSED), Reason: "the scheduler was not running within the catch-up deadline"}); err != nil {
				return err
			}
		}
		sc.Misses += max(r.MissedCount, int64(len(r.Missed)))
		if f.Outcome != batonv1.FireOutcome_FIRE_OUTCOME_UNSPECIFIED {
			if err := add(fireRec{Time: unixNano(f.Time), Manual: f.Manual, Outcome: int32(f.Outcome), Job: f.JobID, Group: f.GroupID, Reason: f.Reason}); err != nil {
				return err
			}
			if f.Time.After(sc.LastFire) {
				sc.LastFire = f.Time
			}
			switch f.Outcome {
			case batonv1.FireOutcome_FIRE_OUTCOME_STARTED:
				sc.Fires++
				sc.LastJobID, sc.LastGroupID = f.JobID, f.GroupID
			case batonv1.FireOutcome_FIRE_OUTCOME_SKIPPED:
				sc.Skips++
			case batonv1.FireOutcome_FIRE_OUTCOME_MISSED:
				sc.Misses++
			}
		}
		if g := r.Group; g != nil {
			if err := e.insertGroup(tx, *g); err != nil {
				return err
			}
		}
		for _, p := range jobs {
			err := e.insertJob(tx, p.j, p.st)
			if errors.Is(err, ErrNotFound) {
				// Not the schedule's absence, which ErrNotFound means here.
				return fmt.Errorf("job %s names a group that does not exist: %v", p.j.ID, err)
			}
			if err != nil {
				return err
			}
		}
		// Newest first; the history limit keeps the newest.
		slices.SortStableFunc(fires, func(a, b fireRec) int { return cmp.Compare(b.Time, a.Time) })
		if r.HistoryLimit > 0 && len(fires) > r.HistoryLimit {
			fires = fires[:r.HistoryLimit]
		}
		b, err := json.Marshal(fires)
		if err != nil {
			return err
		}
		tx.put(e.firesKey(sc.ID), b)
		sb, err := encodeSchedule(sc)
		if err != nil {
			return err
		}
		tx.put(string(key), sb)
		out = sc
		return nil
	})
	switch {
	case err == nil:
		return out, nil
	case errors.Is(err, ErrNotFound), errors.Is(err, ErrConflict):
		return Schedule{}, err
	default:
		return Schedule{}, fmt.Errorf("record fire of schedule %s: %w", r.ScheduleID, err)
	}
}

// ScheduleFires implements [Schedules].
func (e *Etcd) ScheduleFires(ctx context.Context, scheduleID string, limit int) ([]Fire, error) {
	var out []Fire
	err := e.view(ctx, func(tx *etx) error {
		fires, err := e.readFires(tx, scheduleID)
		if err != nil {
			return err
		}
		if limit >= 0 && len(fires) > limit {
			fires = fires[:limit]
		}
		for _, fr := range fires {
			out = append(out, Fire{Time: fromUnixNano(fr.Time), Manual: fr.Manual, Outcome: batonv1.FireOutcome(fr.Outcome),
				JobID: fr.Job, GroupID: fr.Group, Reason: fr.Reason})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list fires: %w", err)
	}
	return out, nil
}

package scheduler

import (
	"encoding/base64"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/services/scheduler/store"
)

// rosterViewTTL bounds how stale a ListWorkers answer's last_heartbeat
// times may be. Any other roster change (a join, a state change, a new
// running count) shows in the next answer.
const rosterViewTTL = time.Second

// rosterView caches the ListWorkers answer and its protobuf wire form.
//
// With 10,000 workers, converting the roster and marshalling it took ~10 ms
// a call, and a StartJob (which changes one worker's running count) between
// two calls made each of them pay it again. The view keeps every worker's
// message and encoding, and re-encodes only the workers that changed: those
// whose rev moved, and, once the answer is older than rosterViewTTL, those
// that heartbeated since. An answer is then one concatenation, which
// listCodec writes out instead of marshalling 10,000 messages.
//
// It is safe for concurrent use; the answers it returns are shared and
// never modified.
type rosterView struct {
	// mu serialises refreshes; readers of an answer do not take it.
	mu sync.Mutex
	// membership and version are the registry's counters the slots reflect.
	membership, version uint64
	// slots holds every member of the registry, by name.
	slots []viewSlot
	// chunks is the encoding of the listed slots, viewChunk slots each.
	chunks [][]byte
	cur    atomic.Pointer[rosterList]
}

// viewSlot is one member as the view last encoded it.
type viewSlot struct {
	m   *member
	rev uint64    // m.rev when encoded
	hb  time.Time // m.w.LastHeartbeat when encoded
	// pb is the member's API form, nil while it is not listed (known only
	// as a name before its registration completes).
	pb *batonv1.Worker
	// enc is pb as one ListWorkersResponse.workers field: tag, length,
	// message.
	enc []byte
}

// rosterList is one complete answer.
type rosterList struct {
	// synced is when every listed last_heartbeat was last brought up to
	// date; other changes are applied as they happen.
	synced time.Time
	res    *batonv1.ListWorkersResponse
	// enc is res in protobuf binary form: the concatenation of its chunks.
	enc [][]byte
}

// listQuery is what a ListWorkers call asks for.
type listQuery struct {
	states   []batonv1.WorkerState // all when empty
	selector map[string]string     // all when empty
	pageSize int                   // all when 0
	after    string                // the page starts after this name
}

// list answers q, by name. The answer for all workers at once is the
// view's current one, which listCodec writes from its cached encoding;
// pages and filtered answers come from the registry's indexes (see
// registry.list), at the cost of what they hold.
func (v *rosterView) list(reg *registry, q listQuery) *batonv1.ListWorkersResponse {
	if len(q.states) == 0 && len(q.selector) == 0 && q.pageSize == 0 && q.after == "" {
		return v.current(reg).res
	}
	return reg.list(q)
}

// list answers a page or a filtered listing from the indexes: it walks the
// narrowest of them (the selector's rarest label pair, or the states asked
// for, or every worker) from the page's start, and stops one worker past
// the page. Only finding the workers holds the roster lock; their messages
// are made under each one's own lock.
func (r *registry) list(q listQuery) *batonv1.ListWorkersResponse {
	limit := -1 // all
	if q.pageSize > 0 {
		limit = q.pageSize + 1 // one more tells whether a next page exists
	}
	states := slices.Compact(slices.Sorted(slices.Values(q.states)))
	r.mu.RLock()
	sources := []*memberTree{r.idx.narrowest(q.selector)}
	if len(states) > 0 {
		var byState []*memberTree
		n := 0
		for _, st := range states {
			t := r.idx.state(st)
			byState = append(byState, t)
			n += t.Len()
		}
		if n < sources[0].Len() {
			sources = byState
		}
	}
	var found []*member
	for _, t := range sources {
		n := 0
		walk := func(m *member) bool {
			if m.w.ID == q.after || m.w.State == batonv1.WorkerState_WORKER_STATE_UNSPECIFIED ||
				len(states) > 0 && !slices.Contains(states, m.w.State) || !matches(m.w.Labels, q.selector) {
				return true
			}
			found = append(found, m)
			n++
			return limit < 0 || n < limit
		}
		if q.after == "" {
			t.Ascend(walk)
		} else {
			t.AscendGreaterOrEqual(&member{w: store.Worker{ID: q.after}}, walk)
		}
	}
	r.mu.RUnlock()
	if len(sources) > 1 {
		// Each state's workers are in name order; so is the page.
		slices.SortFunc(found, func(a, b *member) int { return strings.Compare(a.w.ID, b.w.ID) })
	}
	if limit > 0 && len(found) > limit {
		found = found[:limit]
	}
	res := &batonv1.ListWorkersResponse{}
	if q.pageSize > 0 && len(found) > q.pageSize {
		found = found[:q.pageSize]
		res.NextPageToken = pageToken(found[q.pageSize-1].w.ID)
	}
	res.Workers = make([]*batonv1.Worker, 0, len(found))
	for _, m := range found {
		m.hot.Lock() // enough for every field of m.w (see member)
		// A worker whose state changed since it was found is left out
		// rather than listed against the filter; the page may be short.
		if (len(states) == 0 || slices.Contains(states, m.w.State)) && matches(m.w.Labels, q.selector) {
			res.Workers = append(res.Workers, workerToProto(m.w))
		}
		m.hot.Unlock()
	}
	return res
}

// pageToken is the opaque token of a page starting after worker name.
func pageToken(name string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(name))
}

// parsePageToken is the worker name a page token starts after.
func parsePageToken(tok string) (string, error) {
	name, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil || !workerNameRE.Match(name) {
		return "", newError(store.ErrInvalidPageToken, "page_token is not one a previous ListWorkers returned")
	}
	return string(name), nil
}

// workerNameRE is the worker name pattern of the schema.
var workerNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// encoded returns the wire form of res, in chunks, if res is the view's
// current answer.
func (v *rosterView) encoded(res *batonv1.ListWorkersResponse) ([][]byte, bool) {
	if cur := v.cur.Load(); cur != nil && cur.res == res {
		return cur.enc, true
	}
	return nil, false
}

// current brings the answer up to date with reg and returns it.
func (v *rosterView) current(reg *registry) *rosterList {
	v.mu.Lock()
	defer v.mu.Unlock()
	now := time.Now()
	cur := v.cur.Load()
	resync := cur == nil || now.Sub(cur.synced) > rosterViewTTL

	version := reg.version.Load()
	if !resync && version == v.version {
		return cur
	}
	reg.mu.RLock()
	resorted := false
	if reg.membership != v.membership || cur == nil {
		v.resortLocked(reg)
		resorted = true
	}
	reg.mu.RUnlock()
	// A change after the version was read moves it again: the next call
	// walks again, so no change is missed.
	v.version = version
	// Copy what changed, each member under its own lock (which its cold
	// fields are written under too); encode after, so that a heartbeat
	// waits for one copy at most. No roster lock is held: a join or a
	// placement meanwhile shows in the next answer.
	var stale []int
	for i := range v.slots {
		s := &v.slots[i]
		m := s.m
		m.hot.Lock()
		if m.rev == s.rev && (!resync || s.pb == nil || m.w.LastHeartbeat.Equal(s.hb)) {
			m.hot.Unlock()
			continue
		}
		s.rev, s.hb = m.rev, m.w.LastHeartbeat
		s.pb, s.enc = nil, nil
		if m.w.State != batonv1.WorkerState_WORKER_STATE_UNSPECIFIED {
			s.pb = workerToProto(m.w)
			stale = append(stale, i)
		}
		m.hot.Unlock()
	}

	for _, i := range stale {
		s := &v.slots[i]
		s.enc = appendWorkerField(nil, s.pb)
	}
	synced := now
	if !resync {
		synced = cur.synced
	}
	if !resorted && len(stale) == 0 && cur != nil {
		// Nothing listed changed (the heartbeat times checked out, or only
		// a worker not yet listed moved): same answer, newer date.
		next := &rosterList{synced: synced, res: cur.res, enc: cur.enc}
		v.cur.Store(next)
		return next
	}
	// The encoding is kept in chunks of viewChunk slots: a change
	// re-concatenates only its chunk, not the whole roster's megabytes.
	if chunks := (len(v.slots) + viewChunk - 1) / viewChunk; resorted || len(v.chunks) != chunks {
		v.chunks = make([][]byte, chunks)
		for c := range v.chunks {
			v.chunks[c] = v.chunkEncoding(c)
		}
	} else {
		last := -1
		for _, i := range stale { // in slot order
			if c := i / viewChunk; c != last {
				v.chunks[c] = v.chunkEncoding(c)
				last = c
			}
		}
	}
	n := 0
	for i := range v.slots {
		if v.slots[i].pb != nil {
			n++
		}
	}
	workers := make([]*batonv1.Worker, 0, n)
	for i := range v.slots {
		if s := &v.slots[i]; s.pb != nil {
			workers = append(workers, s.pb)
		}
	}
	next := &rosterList{synced: synced, res: &batonv1.ListWorkersResponse{Workers: workers}, enc: slices.Clone(v.chunks)}
	v.cur.Store(next)
	return next
}

// viewChunk is how many slots share one chunk of the view's encoding.
const viewChunk = 256

// chunkEncoding concatenates the encodings of chunk c's listed slots. A
// chunk once built is never modified: answers in flight hold it.
func (v *rosterView) chunkEncoding(c int) []byte {
	slots := v.slots[c*viewChunk : min((c+1)*viewChunk, len(v.slots))]
	size := 0
	for i := range slots {
		size += len(slots[i].enc)
	}
	b := make([]byte, 0, size)
	for i := range slots {
		b = append(b, slots[i].enc...)
	}
	return b
}

// resortLocked rebuilds the slots from reg's members, in name order (a
// worker's name is its id),
// keeping what was encoded. The caller holds v.mu and reg.mu (read).
func (v *rosterView) resortLocked(reg *registry) {
	old := make(map[*member]viewSlot, len(v.slots))
	for _, s := range v.slots {
		old[s.m] = s
	}
	slots := make([]viewSlot, 0, reg.idx.all.Len())
	reg.idx.all.Ascend(func(m *member) bool {
		s, ok := old[m]
		if !ok {
			s = viewSlot{m: m}
		}
		slots = append(slots, s)
		return true
	})
	v.slots = slots
	v.membership = reg.membership
}

// appendWorkerField appends w as field 1 (workers) of a
// ListWorkersResponse, so that answers are concatenations of these.
func appendWorkerField(b []byte, w *batonv1.Worker) []byte {
	size := proto.Size(w)
	b = slices.Grow(b, protowire.SizeTag(1)+protowire.SizeBytes(size))
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(size))
	// Size was just computed: marshal without computing it again.
	b, err := proto.MarshalOptions{UseCachedSize: true}.MarshalAppend(b, w)
	if err != nil {
		// A Worker has no required fields and no invalid UTF-8 (its strings
		// passed validation), so this cannot fail.
		panic(fmt.Sprintf("marshal worker %q: %v", w.GetName(), err))
	}
	return b
}

// codec is the handler option that writes the view's answers from their
// cached wire form.
func (v *rosterView) codec() connect.HandlerOption {
	return connect.WithCodec(listCodec{view: v})
}

// listCodec is connect's binary protobuf codec, except that it writes the
// roster view's current ListWorkers answer from the view's cached wire
// form. Every other message, and an answer the view has since replaced, is
// marshalled as usual. It is safe for concurrent use.
type listCodec struct {
	view *rosterView
}

// Name is the codec's name in content types: it replaces the default
// "proto" codec.
func (listCodec) Name() string { return "proto" }

// Marshal encodes msg.
func (c listCodec) Marshal(msg any) ([]byte, error) { return c.MarshalAppend(nil, msg) }

// MarshalAppend encodes msg after dst. connect calls it with a pooled
// buffer, so the cached bytes are copied, never handed out.
func (c listCodec) MarshalAppend(dst []byte, msg any) ([]byte, error) {
	if res, ok := msg.(*batonv1.ListWorkersResponse); ok {
		if enc, ok := c.view.encoded(res); ok {
			size := 0
			for _, chunk := range enc {
				size += len(chunk)
			}
			dst = slices.Grow(dst, size) // once, not a doubling per chunk
			for _, chunk := range enc {
				dst = append(dst, chunk...)
			}
			return dst, nil
		}
	}
	pm, ok := msg.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("%T is not a protobuf message", msg)
	}
	return proto.MarshalOptions{}.MarshalAppend(dst, pm)
}

// Unmarshal decodes data into msg.
func (listCodec) Unmarshal(data []byte, msg any) error {
	pm, ok := msg.(proto.Message)
	if !ok {
		return fmt.Errorf("%T is not a protobuf message", msg)
	}
	if err := proto.Unmarshal(data, pm); err != nil {
		return fmt.Errorf("unmarshal into %T: %w", msg, err)
	}
	return nil
}

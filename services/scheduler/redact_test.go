package scheduler_test

import (
	"testing"

	"connectrpc.com/connect"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
	"github.com/baton-run/baton/services/identity"
)

// TestEnvValuesForOwnerAndAdmins: a job's env values (tokens, passwords)
// are shown to its owner and to admins; a viewer, who may read every job,
// sees the names with the values redacted, in every call that returns a
// job's status.
func TestEnvValuesForOwnerAndAdmins(t *testing.T) {
	t.Parallel()
	c := startSecureCluster(t, "w1")
	const secret = "s3cret-value"
	started := startJob(t, c.client(t, alice), &batonv1.StartJobRequest{
		All: true, Command: "sh", Path: "hello.sh", Env: map[string]string{"API_TOKEN": secret, "MODE": "fast"},
	})
	id, gid := started.GetJobId(), started.GetGroupId()
	waitFor(t, "the job to end", func() bool { return queryJob(t, c.client(t, alice), id).GetDone() })

	for _, tc := range []struct {
		who     identity.Principal
		visible bool
	}{
		{alice, true},
		{root, true},
		{vic, false},
	} {
		t.Run(tc.who.String(), func(t *testing.T) {
			client := c.client(t, tc.who)
			check := func(call string, st *batonv1.JobStatus) {
				t.Helper()
				env := st.GetSpec().GetEnv()
				want := map[bool]string{true: secret, false: "[redacted]"}[tc.visible]
				if env["API_TOKEN"] != want || len(env) != 2 {
					t.Errorf("%s: env %v, want API_TOKEN=%q and both names", call, env, want)
				}
			}
			check("QueryJob", queryJob(t, client, id).GetStatus())
			q, err := client.QueryJob(t.Context(), connect.NewRequest(&batonv1.QueryJobRequest{GroupId: gid}))
			if err != nil {
				t.Fatal(err)
			}
			check("QueryJob{group_id}", q.Msg.GetJobs()[0])
			list, err := client.ListJobs(t.Context(), connect.NewRequest(&batonv1.ListJobsRequest{GroupId: gid}))
			if err != nil || len(list.Msg.GetJobs()) != 1 {
				t.Fatalf("ListJobs: %v %v", list, err)
			}
			check("ListJobs", list.Msg.GetJobs()[0])
			stream, err := client.StreamJobOutput(t.Context(), connect.NewRequest(&batonv1.StreamJobOutputRequest{JobId: id, Follow: true}))
			if err != nil {
				t.Fatal(err)
			}
			defer stream.Close()
			var final *batonv1.JobStatus
			for stream.Receive() {
				if st := stream.Msg().GetStatus(); st != nil {
					final = st
				}
			}
			if err := stream.Err(); err != nil {
				t.Fatal(err)
			}
			check("StreamJobOutput's final status", final)
		})
	}
}

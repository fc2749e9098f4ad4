package client_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log"
	"os"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/baton-run/baton/client"
	batonv1 "github.com/baton-run/baton/gen/baton/v1"
)

// Run a job and follow its output to the end: stdout and stderr as the
// job writes them, then its final status. A job that fails is a status,
// not an error.
func Example() {
	c, err := client.New(client.Config{Schedulers: []string{schedulerAddr}})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	var stdout, stderr bytes.Buffer
	st, err := c.Run(context.Background(), &batonv1.StartJobRequest{
		Command: "sh",
		Args:    []string{"-c", "echo hello; echo oops >&2; exit 3"},
	}, client.Handlers{
		Output: func(chunk *batonv1.OutputChunk) error {
			if chunk.GetStream() == batonv1.OutputStream_OUTPUT_STREAM_STDERR {
				stderr.Write(chunk.GetData())
			} else {
				stdout.Write(chunk.GetData())
			}
			return nil
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("stdout %q, stderr %q\n", stdout.String(), stderr.String())
	fmt.Println(st.GetState(), st.GetExitCode())
	// Output:
	// stdout "hello\n", stderr "oops\n"
	// JOB_STATE_FAILED 3
}

// Wait for a free slot: with a queue_timeout, a job that finds its worker
// full waits in the scheduler's queue, and Run says so before it says the
// job started.
func ExampleClient_Run_queue() {
	ctx := context.Background()
	c, err := client.New(client.Config{Schedulers: []string{schedulerAddr}})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	// Worker "small" runs one job at a time: this one takes its slot.
	first, err := c.Start(ctx, &batonv1.StartJobRequest{
		WorkerId: "small", Command: "sh", Args: []string{"-c", "sleep 60"},
		QueueTimeout: durationpb.New(client.NoQueueLimit),
	})
	if err != nil {
		log.Fatal(err)
	}
	queued := false
	st, err := c.Run(ctx, &batonv1.StartJobRequest{
		WorkerId: "small", Command: "sh", Args: []string{"-c", "echo my turn"},
		QueueTimeout: durationpb.New(client.NoQueueLimit),
	}, client.Handlers{
		Queued: func(*batonv1.JobStatus) {
			if queued {
				return // a new place in the queue
			}
			queued = true
			fmt.Println("queued")
			// Free the slot: the job waiting for it starts.
			if _, err := c.Stop(ctx, first.GetJobId()); err != nil {
				log.Fatal(err)
			}
		},
		Started: func(st *batonv1.JobStatus) { fmt.Println("started on", st.GetWorkerId()) },
		Output: func(chunk *batonv1.OutputChunk) error {
			_, err := os.Stdout.Write(chunk.GetData())
			return err
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(st.GetState())
	// Output:
	// queued
	// started on small
	// my turn
	// JOB_STATE_SUCCEEDED
}

// Start a job at most once: a start tried again with the same idempotency
// key (here by hand; Start does it by itself when an answer is lost)
// returns the job the first one started.
func ExampleClient_Start() {
	ctx := context.Background()
	c, err := client.New(client.Config{Schedulers: []string{schedulerAddr}})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	req := &batonv1.StartJobRequest{
		Command:        "sh",
		Args:           []string{"-c", "echo once"},
		IdempotencyKey: "example-start-once",
	}
	first, err := c.Start(ctx, req)
	if err != nil {
		log.Fatal(err)
	}
	again, err := c.Start(ctx, req)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("same job:", again.GetJobId() == first.GetJobId())
	// Output:
	// same job: true
}

// Follow a job from where a reader left off: the offset counts bytes of
// the output, both streams interleaved, and Follow resumes from the last
// byte it passed on whenever a stream is cut.
func ExampleClient_Follow() {
	ctx := context.Background()
	c, err := client.New(client.Config{Schedulers: []string{schedulerAddr}})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	res, err := c.Start(ctx, &batonv1.StartJobRequest{Command: "sh", Args: []string{"-c", "echo hello; echo world"}})
	if err != nil {
		log.Fatal(err)
	}
	// This reader has "hello\n" already.
	st, err := c.Follow(ctx, &batonv1.StreamJobOutputRequest{JobId: res.GetJobId(), Offset: 6}, client.Handlers{
		Output: func(chunk *batonv1.OutputChunk) error {
			_, err := os.Stdout.Write(chunk.GetData())
			return err
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(st.GetState())
	// Output:
	// world
	// JOB_STATE_SUCCEEDED
}

// Tell the scheduler's refusals apart with errors.Is, or read the code
// with errors.As.
func ExampleError() {
	c, err := client.New(client.Config{Schedulers: []string{schedulerAddr}})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	_, err = c.Run(context.Background(), &batonv1.StartJobRequest{WorkerId: "no-such-worker", Command: "sh"}, client.Handlers{})
	fmt.Println(errors.Is(err, client.ErrNotFound))
	var e *client.Error
	if errors.As(err, &e) {
		fmt.Println(e.Code)
	}
	// Output:
	// true
	// not_found
}

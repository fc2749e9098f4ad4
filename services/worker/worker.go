// Package worker serves WorkerService: it runs jobs through jobrun on behalf
// of the scheduler, and keeps the worker registered with the scheduler by
// heartbeats that carry its jobs' state changes.
package worker

//go:build !race

package scheduler_test

// raceEnabled is true when the race detector slows every step by ~10×.
const raceEnabled = false

//go:build race

package worker

// raceEnabled is true when the race detector slows every byte by ~10×.
const raceEnabled = true

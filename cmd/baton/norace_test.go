//go:build !race

package main

// raceEnabled is true when the race detector slows every step by ~10×.
const raceEnabled = false

package replica

// WorkerCalls are the procedures a follower never relays.
var WorkerCalls = workerCalls

// Package interceptors holds the Connect interceptors every Baton service
// installs: one access-log line per RPC and a cap on how long a call may run.
package interceptors

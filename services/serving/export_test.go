package serving

// SelfSigned lends the external tests a throwaway certificate for
// 127.0.0.1.
var SelfSigned = selfSigned

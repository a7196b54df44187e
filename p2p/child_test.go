package p2p

const childEnv = "SHOAL_P2P_TEST_CHILD"

func runChild() int { return 0 }

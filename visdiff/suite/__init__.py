"""`visdiff bench`: a suite of paired image sets with known differences (VisDiffBench), one
describe run per pair, scored and summarised as Acc@1 / Acc@5 per suite and difficulty."""

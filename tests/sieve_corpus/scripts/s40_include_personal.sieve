require ["include", "fileinto"];
include :personal "common";
include :personal :optional "does-not-exist";
fileinto "AfterInclude";
